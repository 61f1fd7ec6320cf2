"""Death at a chosen point, for the tests that prove a task killed there repeats nothing.

``PHOTOFARM_FAULT_POINT=<point>`` makes a worker SIGKILL itself (no cleanup, no finally blocks,
as an out-of-memory kill or a lost machine would) the first time it reaches that point:

- ``social.answered``: a cross-post's network has answered (the post exists) and its post record
  is not written yet (tasks/social/crosspost.py).

The variable is read once, at import, like config/reliable_redis.py's ``fault``: unset, each
point costs one string comparison.
"""

from __future__ import annotations

import os
import signal

FAULT_POINT = os.environ.get("PHOTOFARM_FAULT_POINT", "")


def die_at(point: str) -> None:
    """SIGKILL this process here when the environment names ``point``."""
    if point == FAULT_POINT:
        os.kill(os.getpid(), signal.SIGKILL)

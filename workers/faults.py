"""A warm shutdown at a chosen point, for the tests that prove one loses and repeats nothing.

``PHOTOFARM_SIGTERM_AT=<point>`` makes a worker's parent send itself SIGTERM (what supervisord
sends on every stop) the first time it reaches that point:

- ``received``: the consumer has just taken a task message, before the pool has it
  (workers/signals.py);
- ``handed``: the pool has just written a task into a child's pipe, before the child said it
  took it (workers/prefork.py).

Unset, each point costs one string comparison.
"""

from __future__ import annotations

import os
import signal

SIGTERM_AT = os.environ.get("PHOTOFARM_SIGTERM_AT", "")
POINTS = ("received", "handed")


def armed(point: str) -> bool:
    return point == SIGTERM_AT


def sigterm_self_once(point: str) -> None:
    """SIGTERM this process at ``point`` if the environment asks for it, once (a second TERM
    would only repeat the warm shutdown)."""
    global SIGTERM_AT
    if point == SIGTERM_AT:
        SIGTERM_AT = ""
        os.kill(os.getpid(), signal.SIGTERM)

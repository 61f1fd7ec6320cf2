"""A prefork child's messages to its parent, written whole even when a soft time limit fires.

billiard raises SoftTimeLimitExceeded from the child's SIGUSR1 handler wherever the child is,
and that includes the write of a finished task's result to the parent's pipe: the write is
left half done, the child then writes its error report after it, and the parent reads garbage
(``Unrecoverable error: UnpicklingError("invalid load key, '\\x00'")``), stops consuming and
hangs in its shutdown, alive and silent, so supervisord never restarts it. It takes a parent
that is slow to read (its pipe full), which is what a host cut off from its broker has: found
by tests/hosts/test_host_loss.py.

So in a pool child the signal is blocked while a message is written, and one that came in the
meantime is dropped: it was for the task whose result is going out (or the one before an
acknowledgement), already over.
"""

from __future__ import annotations

import signal
from typing import Any

from billiard import queues
from billiard.pool import SIG_SOFT_TIMEOUT

PipeQueue: Any = queues._SimpleQueue  # type: ignore[attr-defined]  # a child's queue to its parent
_plain_send = PipeQueue.send_payload


def _send_whole(self: Any, value: bytes) -> None:
    assert SIG_SOFT_TIMEOUT is not None  # guarded by install()
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {SIG_SOFT_TIMEOUT})
    try:
        _plain_send(self, value)
    finally:
        if SIG_SOFT_TIMEOUT in signal.sigpending():
            signal.sigtimedwait({SIG_SOFT_TIMEOUT}, 0)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def install(**_: Any) -> None:
    """In a pool child (worker_process_init), before its first task."""
    if SIG_SOFT_TIMEOUT is not None:
        PipeQueue.send_payload = _send_whole

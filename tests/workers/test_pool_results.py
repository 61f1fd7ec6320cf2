"""A pool child's result write survives its soft time limit firing in the middle of it
(workers/pool_results.py): a real fork, a real pipe too full to take the message at once, and
billiard's own SIGUSR1 handler."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

from billiard.exceptions import SoftTimeLimitExceeded
from billiard.pool import soft_timeout_sighandler
from billiard.queues import _SimpleQueue

from tests.support.workers import wait_for
from workers import pool_results

BIG = b"r" * (1 << 20)  # far over a pipe's 64 KiB: the write blocks until the parent reads
SIGUSR1_BIT = 1 << (signal.SIGUSR1 - 1)


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def _pending(pid: int) -> bool:
    status = _status(pid)
    return bool((int(status["SigPnd"], 16) | int(status["ShdPnd"], 16)) & SIGUSR1_BIT)


@contextlib.contextmanager
def child_writing(queue: _SimpleQueue) -> Iterator[int]:
    """A forked child, as a pool child: the guard installed, billiard's handler on SIGUSR1,
    sending BIG and then b"after" (or b"interrupted" first, had the limit cut the write)."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 0
        try:
            pool_results.install()
            signal.signal(signal.SIGUSR1, soft_timeout_sighandler)
            try:
                queue.put(BIG)
            except SoftTimeLimitExceeded:
                queue.put(b"interrupted")
            queue.put(b"after")
        except BaseException:
            code = 1
        os._exit(code)
    try:
        yield pid
    finally:
        with contextlib.suppress(ProcessLookupError, ChildProcessError):  # reaped by the test
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def test_a_soft_time_limit_during_a_result_write_leaves_the_message_whole() -> None:
    queue = _SimpleQueue()
    with child_writing(queue) as pid:
        wait_for(lambda: "pipe_write" in Path(f"/proc/{pid}/wchan").read_text(), timeout=30,
                 what="the child blocked writing its result")
        os.kill(pid, signal.SIGUSR1)  # what the parent does when the soft time limit passes
        wait_for(lambda: _pending(pid), timeout=30, what="the limit held off during the write")
        assert queue.get() == BIG
        assert queue.get() == b"after"
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0

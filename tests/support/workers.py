"""What tests with real worker processes share: waiting on a condition, and short limits."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable

from workers.launcher import WorkerProcess

# Short limits so a message a killed worker held comes back in seconds, not an hour.
FAST_REDELIVERY = {
    "FARM_TASK_TIME_LIMIT": "4",
    "FARM_TASK_SOFT_TIME_LIMIT": "3",
    "FARM_RETRY_MAX_DELAY": "1",
    "FARM_VISIBILITY_TIMEOUT": "6",
    "FARM_RESTORE_INTERVAL": "1",
}

WorkerFactory = Callable[..., WorkerProcess]


def wait_for(predicate: Callable[[], object], timeout: float = 20.0, interval: float = 0.05,
             what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def stop_group(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """SIGTERM a process started with ``start_new_session=True``; SIGKILL its whole group if it
    has not exited within ``timeout``."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

"""What tests with real worker processes share: waiting on a condition, and short limits."""

from __future__ import annotations

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

"""Diagnostic tasks: `farm ping` round trips, and synthetic jobs that exercise the retry and
dead-letter paths on a live farm (the demo and the integration tests drive them)."""

from __future__ import annotations

import os
import time

from config.settings import get_settings
from tasks.core import timing
from tasks.core.base import farm_task
from tasks.core.redis import data_redis
from tasks.diagnostics import synthetic


@farm_task("diag.ping", ignore_result=False, max_retries=0)
def ping(sent_at: float) -> dict[str, float | int | str]:
    """Echo the send time so the caller can measure the queue's round trip."""
    return {"sent_at": sent_at, "ran_at": time.time(), "pid": os.getpid()}


@farm_task("diag.sleep", max_retries=0)
def sleep(seconds: float, marker: str = "") -> None:
    """Hold a worker for a while; with a ``marker``, records each start under
    ``diag:<marker>:started`` and the finish time under ``diag:<marker>``."""
    if marker:
        data_redis().rpush(get_settings().key("diag", marker, "started"), f"{time.time():.6f}")
    with timing.phase("sleep"):
        time.sleep(seconds)
    if marker:
        s = get_settings()
        data_redis().rpush(s.key("diag", marker), f"{time.time():.6f}")


@farm_task("diag.flaky")
def flaky(marker: str, fail_times: int, mode: str = "transient", retry_after: float = 0) -> int:
    """Fail the first ``fail_times`` runs for ``marker`` in ``mode``, then succeed."""
    return synthetic.flaky(marker, fail_times, mode, retry_after)

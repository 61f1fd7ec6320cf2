"""Diagnostic tasks: `farm ping` round trips, and synthetic jobs that exercise the retry and
dead-letter paths on a live farm (the demo and the integration tests drive them)."""

from __future__ import annotations

import os
import time

from config.redis import data_redis
from config.settings import get_settings
from tasks import timing
from tasks.base import farm_task
from tasks.errors import PermanentError, TransientError

FLAKY_MODES = ("transient", "permanent", "bug", "crash")


@farm_task("diag.ping", ignore_result=False, max_retries=0)
def ping(sent_at: float) -> dict[str, float | int | str]:
    """Echo the send time so the caller can measure the queue's round trip."""
    return {"sent_at": sent_at, "ran_at": time.time(), "pid": os.getpid()}


@farm_task("diag.sleep", max_retries=0)
def sleep(seconds: float, marker: str = "") -> None:
    """Hold a worker for a while; records its finish time under ``marker`` if given."""
    with timing.phase("sleep"):
        time.sleep(seconds)
    if marker:
        s = get_settings()
        data_redis().rpush(s.key("diag", marker), f"{time.time():.6f}")


def flaky(marker: str, fail_times: int, mode: str = "transient", retry_after: float = 0) -> int:
    """Fail the first ``fail_times`` runs for ``marker`` in the given mode, then succeed.

    Every run appends its start time to ``diag:<marker>:runs``, so a test can read the backoff.
    """
    if mode not in FLAKY_MODES:
        raise PermanentError(f"unknown mode {mode!r}; expected one of {', '.join(FLAKY_MODES)}")
    s = get_settings()
    r = data_redis()
    run = r.rpush(s.key("diag", marker, "runs"), f"{time.time():.6f}")
    if run <= fail_times:
        if mode == "transient":
            raise TransientError(f"run {run} of {marker} fails on purpose",
                                 retry_after=retry_after or None)
        if mode == "permanent":
            raise PermanentError(f"run {run} of {marker} fails on purpose")
        if mode == "crash":
            os._exit(70)  # the process dies under the task, as an OOM kill would
        raise RuntimeError(f"run {run} of {marker} hits a bug on purpose")
    r.set(s.key("diag", marker, "done"), run)
    return run


flaky_task = farm_task("diag.flaky")(flaky)

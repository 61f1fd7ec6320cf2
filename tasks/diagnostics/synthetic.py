"""Synthetic failures on purpose: a job that fails the way it is told a number of times, then
succeeds, so the demo and the tests drive the retry and dead-letter paths on a live farm."""

from __future__ import annotations

import os
import time

from config.settings import get_settings
from tasks.core.errors import PermanentError, RateLimited, TransientError
from tasks.core.redis import data_redis


def flaky(marker: str, fail_times: int, mode: str = "transient", retry_after: float = 0) -> int:
    """Fail the first ``fail_times`` runs for ``marker`` in the given mode, then succeed.

    Every run appends its start time to ``diag:<marker>:runs``, so a test can read the backoff.
    """
    s = get_settings()
    r = data_redis()
    run = r.rpush(s.key("diag", marker, "runs"), f"{time.time():.6f}")
    if run <= fail_times:
        if mode == "transient":
            raise TransientError(f"run {run} of {marker} fails on purpose",
                                 retry_after=retry_after or None)
        if mode == "ratelimited":
            raise RateLimited(f"run {run} of {marker} is over a rate limit on purpose",
                              retry_after=retry_after or None)
        if mode == "permanent":
            raise PermanentError(f"run {run} of {marker} fails on purpose")
        if mode == "crash":
            os._exit(70)  # the process dies under the task, as an OOM kill would
        raise RuntimeError(f"run {run} of {marker} hits a bug on purpose")
    r.set(s.key("diag", marker, "done"), run)
    return run

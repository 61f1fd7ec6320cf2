"""Retry delays: exponential backoff with full jitter, honouring the server's Retry-After.

Not Celery's ``retry_backoff``/``retry_jitter``: they know nothing of a server's Retry-After or
rate-limit reset, which Apple, X and Facebook all send."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime


def retry_delay(
    retries: int,
    base: float,
    cap: float,
    retry_after: float | None = None,
    rand: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait before attempt ``retries + 1``.

    Full jitter (AWS architecture blog, "Exponential Backoff and Jitter"): uniform over
    [0, min(cap, base * 2**retries)], which spreads a thundering herd best. A server's Retry-After
    is a floor: we wait at least that long, plus a little jitter so the herd does not return in
    the same millisecond. Nothing waits longer than ``cap``, which settings keep inside the
    broker's visibility timeout.
    """
    ceiling: float = min(cap, base * (2 ** min(retries, 32)))
    delay = rand() * ceiling
    if retry_after is not None and retry_after > 0:
        delay = retry_after + rand() * min(base, cap)
    return min(delay, cap)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """An HTTP Retry-After header (delta-seconds or an HTTP-date) as seconds from now."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())

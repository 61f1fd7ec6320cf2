"""The two kinds of failure every task declares against."""

from __future__ import annotations


class TransientError(Exception):
    """Worth retrying: a timeout, a 5xx, throttling. ``retry_after`` is the server's wish, in s."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(Exception):
    """Retrying cannot help: corrupt input, unknown id, revoked token. Dead-lettered at once."""


class RateLimited(TransientError):
    """Over a farm-wide rate limit or a server's quota: the task waits ``retry_after`` seconds and
    runs again. Such waits do not use up the task's retries (a busy hour is not a failure); the
    task base caps how many it takes (``MAX_RATE_LIMIT_DELAYS``)."""

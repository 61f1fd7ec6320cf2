"""Farm-wide rate limits: every worker process of every machine counts against the same limits,
kept in the data Redis by the `limits` package (moving window: no burst at a window's edge).

A caller asks for one slot under several limits at once (the app's and the account's); when one
is full :meth:`RateLimits.acquire` says how long until a slot frees, and the task waits that long
(``RateLimited``), never failing for it. Limits are hit in the order given: when a later one is
full, the earlier ones have still counted the slot (at most one per refusal), which errs on the
side of sending less.

A server can also ask the whole farm to hold off (Facebook's usage headers, X's 429 reset):
:meth:`RateLimits.pause` records until when, and :meth:`acquire` honours it before counting.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from limits import RateLimitItem, parse
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter

from config.sentinel import redis_from_url
from config.settings import Settings, get_settings
from tasks.core.process_local import ProcessLocal
from tasks.core.redis import data_redis

_limiters: ProcessLocal[str, MovingWindowRateLimiter] = ProcessLocal("rate limiters")
_items: ProcessLocal[str, RateLimitItem] = ProcessLocal("rate limit items")


@dataclass(frozen=True)
class Limit:
    """``rate`` ("100/15minutes") for one thing, named by ``scope`` ("twitter", "app")."""

    rate: str
    scope: tuple[str, ...]


class RateLimits:
    def __init__(self, s: Settings | None = None) -> None:
        self.s = s or get_settings()
        url = self.s.redis_url
        prefix = self.s.key("limits")
        # The pool of our own client, so a data Redis behind Sentinel is followed here too
        # (limits' own redis+sentinel:// storage would read from replicas by default).
        self.limiter = _limiters.get(f"{url}|{prefix}", lambda: MovingWindowRateLimiter(
            RedisStorage(url, key_prefix=prefix,
                         connection_pool=redis_from_url(url, self.s).connection_pool)))

    def acquire(self, limits: Sequence[Limit], now: float | None = None) -> float:
        """0 when a slot was taken under every limit, else the seconds to wait before asking
        again (a pause a server asked for, or until the fullest window frees a slot)."""
        now = time.time() if now is None else now
        paused = self.paused_for(limits, now)
        if paused > 0:
            return paused
        for limit in limits:
            item = _item(limit.rate)
            if not self.limiter.hit(item, *limit.scope):
                reset = self.limiter.get_window_stats(item, *limit.scope).reset_time
                return max(0.05, reset - now)
        return 0.0

    def remaining(self, limit: Limit) -> int:
        return int(self.limiter.get_window_stats(_item(limit.rate), *limit.scope).remaining)

    def clear(self, limit: Limit) -> None:
        self.limiter.clear(_item(limit.rate), *limit.scope)

    def _pause_key(self, scope: tuple[str, ...]) -> str:
        return self.s.key("limits", "pause", *scope)

    def pause(self, scope: tuple[str, ...], seconds: float, now: float | None = None) -> None:
        """Hold everything under ``scope`` for ``seconds`` (only ever lengthened)."""
        until = (time.time() if now is None else now) + seconds
        key = self._pause_key(scope)
        r = data_redis(self.s.redis_url)
        # GT: a shorter pause never cuts a longer one short; the key expires with the pause
        r.zadd(key, {"until": until}, gt=True)
        r.expire(key, int(seconds) + 1, gt=True)
        r.expire(key, int(seconds) + 1, nx=True)

    def paused_for(self, limits: Sequence[Limit], now: float | None = None) -> float:
        now = time.time() if now is None else now
        pipe = data_redis(self.s.redis_url).pipeline(transaction=False)
        for limit in limits:
            pipe.zscore(self._pause_key(limit.scope), "until")
        untils = [float(u) for u in pipe.execute() if u is not None]
        return max([u - now for u in untils] + [0.0])


def _item(rate: str) -> RateLimitItem:
    return _items.get(rate, lambda: parse(rate))

"""Farm-wide rate limits: several real processes share one limit through the data Redis."""

from __future__ import annotations

import multiprocessing
import time

import redis

from config.settings import get_settings
from tasks.core.ratelimit import Limit, RateLimits

RATE, WINDOW = 10, 1.0
LIMIT = Limit(f"{RATE}/second", ("test", "shared"))


def hammer(until: float, url: str) -> None:
    """One process taking slots as fast as it is given them, logging each grant's time."""
    r = redis.Redis.from_url(url)
    limits = RateLimits()
    while time.time() < until:
        wait = limits.acquire([LIMIT])
        if wait == 0:
            r.rpush("granted", repr(time.time()))
        else:
            time.sleep(min(wait, 0.05))


def test_processes_together_never_exceed_the_limit(data: redis.Redis) -> None:
    s = get_settings()
    duration = 3.5
    until = time.time() + duration
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=hammer, args=(until, s.redis_url)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    times = sorted(float(t) for t in data.lrange("granted", 0, -1))
    # In any window the limiter saw at most RATE grants. Each time here was read a moment after
    # its grant, so windows are checked a little shorter than the limiter's own.
    checked = WINDOW - 0.2
    for i, t in enumerate(times):
        in_window = sum(1 for u in times[i:] if u < t + checked)
        assert in_window <= RATE, f"{in_window} grants within {checked}s from {t}"
    # And the processes were given what the limit allows, not starved: at least RATE per full
    # window elapsed.
    assert len(times) >= RATE * int(duration // WINDOW)
    assert len(times) <= RATE * (int(duration // WINDOW) + 1)


def test_a_full_window_says_how_long_to_wait(data: redis.Redis) -> None:
    limits = RateLimits()
    limit = Limit("3/minute", ("test", "wait"))
    now = time.time()
    assert [limits.acquire([limit], now) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limits.acquire([limit], now)
    assert 50 < wait <= 61  # the limiter reads its clock a moment after `now`
    assert limits.remaining(limit) == 0


def test_a_pause_holds_every_limit_under_its_scope_and_only_lengthens(data: redis.Redis) -> None:
    limits = RateLimits()
    account = Limit("100/second", ("net", "account", "7"))
    app = Limit("100/second", ("net", "app"))
    now = time.time()
    limits.pause(("net", "app"), 30, now)
    limits.pause(("net", "app"), 5, now)  # shorter: ignored
    wait = limits.acquire([account, app], now)
    assert 29 < wait <= 30
    assert limits.remaining(account) == 100  # nothing counted while paused
    assert limits.acquire([Limit("100/second", ("other", "app"))], now) == 0.0

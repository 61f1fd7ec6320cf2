"""The farm-wide APNs provider token: one ES256 JWT per signing key, shared by every process.

Apple wants a token refreshed every 20-60 minutes and throttles providers that sign more often
(TooManyProviderTokenUpdates), so the token is never minted per connection or per process: it
lives in the data Redis as {token, iat}. Whoever first finds it older than its refresh age
(45 min, +-5 min per process so the farm doesn't race) re-signs it under a lock; the rest pick it
up. Each process also keeps it in memory and re-reads Redis at most every CHECK_EVERY seconds, so
a push doesn't cost a Redis round trip.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from dataclasses import dataclass
from typing import cast

import jwt
import redis

from config.settings import get_settings
from tasks.core import metrics
from tasks.core.errors import TransientError
from tasks.core.locks import LockNotOwnedError, try_lock
from tasks.core.process_local import ProcessLocal
from tasks.core.redis import data_redis
from tasks.push.apns.apps import App

log = logging.getLogger("farm.apns")

JITTER = 5 * 60.0  # each process refreshes FARM_APNS_TOKEN_REFRESH (45 min) +- this
MAX_AGE = 55 * 60.0  # Apple refuses tokens older than 60 min; past this nobody uses one
CHECK_EVERY = 5.0  # seconds a process trusts its in-memory copy before re-reading Redis
LOCK_TTL = 10.0  # signing takes milliseconds; a crashed signer blocks the others this long
TTL = 3600  # Redis drops the token when Apple would stop accepting it anyway
SIGNED = "apns:tokens_signed"  # metrics counter: one per signing, farm-wide

_clock = time.time  # iat and ages are wall-clock seconds (tests move it)


@dataclass(frozen=True)
class ProviderToken:
    token: str
    iat: int

    def age(self) -> float:
        return _clock() - self.iat


# key -> (token, when this process last read it); and this process's refresh jitter. Per process:
# a prefork child neither inherits its parent's copy nor its jitter (the farm would race).
_cache: ProcessLocal[tuple[str, str], tuple[ProviderToken, float]] = ProcessLocal("apns tokens")
_jitter: ProcessLocal[str, float] = ProcessLocal("apns refresh jitter")


def refresh_age() -> float:
    jitter = _jitter.get("jitter", lambda: random.uniform(-JITTER, JITTER))
    return get_settings().apns_token_refresh + jitter


def get_token(app: App) -> str:
    """The current provider token for the app's signing key, re-signed if stale."""
    key = (app.team_id, app.key_id)
    hit = _cache.peek(key)
    if hit and time.monotonic() - hit[1] < CHECK_EVERY and hit[0].age() < refresh_age():
        return hit[0].token
    try:
        return _fetch(app, stale=None)
    except redis.RedisError:
        # The data Redis blinked: a still-valid copy beats failing every push.
        if hit and hit[0].age() < MAX_AGE:
            return hit[0].token
        raise


def resign(app: App, stale_token: str) -> str:
    """After ExpiredProviderToken: a new token, signed only if Redis still holds the stale one.

    Compare-and-set under the lock, so a thousand streams failing with the same token produce
    one new token, and a caller late to the party gets the one already signed.
    """
    return _fetch(app, stale=stale_token)


def _check_resign_age(app: App, current: ProviderToken) -> None:
    floor = get_settings().apns_min_resign_age
    if current.age() < floor:
        log.warning("APNs answered ExpiredProviderToken for %s/%s's token signed %.0fs ago: not "
                    "re-signing before %ds (check this host's clock)", app.team_id, app.key_id,
                    current.age(), floor)
        raise TransientError(f"ExpiredProviderToken for a token signed {current.age():.0f}s ago; "
                             f"not re-signed before {floor}s (clock skew?)",
                             retry_after=floor - current.age())


def _fetch(app: App, stale: str | None) -> str:
    r, s = data_redis(), get_settings()
    key = s.key("apns", "token", app.team_id, app.key_id)
    deadline = time.monotonic() + LOCK_TTL + 1

    def done(current: ProviderToken | None) -> bool:
        if current is None:
            return False
        return current.token != stale if stale is not None else current.age() < refresh_age()

    while True:
        current = _read(r, key)
        if current is not None and done(current):
            return _remember(app, current)
        lock = try_lock(r, f"{key}:lock", LOCK_TTL)
        if lock is not None:
            try:
                current = _read(r, key)  # another process may have signed while we asked
                if current is None or not done(current):
                    if stale is not None and current is not None:
                        _check_resign_age(app, current)
                    current = _sign(app, r, key)
                return _remember(app, current)
            finally:
                with contextlib.suppress(LockNotOwnedError):  # expired while signing: harmless
                    lock.release()
        # Someone else is signing. A token that Apple still accepts is good enough meanwhile,
        # unless we were told it is the expired one.
        if stale is None and current is not None and current.age() < MAX_AGE:
            return current.token
        if time.monotonic() > deadline:
            raise TransientError(f"APNs provider token for {app.team_id}/{app.key_id}: "
                                 "another process holds the signing lock", retry_after=1)
        time.sleep(0.02)


def _read(r: redis.Redis, key: str) -> ProviderToken | None:
    stored = cast("dict[str, str]", r.hgetall(key))
    if not stored.get("token"):
        return None
    return ProviderToken(stored["token"], int(stored["iat"]))


def _sign(app: App, r: redis.Redis, key: str) -> ProviderToken:
    iat = int(_clock())
    # Apple's documented header is exactly {alg, kid}: typ=None drops PyJWT's default "typ".
    token = jwt.encode({"iss": app.team_id, "iat": iat}, app.signing_key(), algorithm="ES256",
                       headers={"kid": app.key_id, "typ": None})
    pipe = r.pipeline()
    pipe.hset(key, mapping={"token": token, "iat": iat})
    pipe.expire(key, TTL)
    pipe.execute()
    metrics.incr(r, get_settings(), SIGNED)
    log.info("apns provider token signed team=%s kid=%s", app.team_id, app.key_id)
    return ProviderToken(token, iat)


def _remember(app: App, current: ProviderToken) -> str:
    _cache.put((app.team_id, app.key_id), (current, time.monotonic()))
    return current.token


def clear_cache() -> None:
    _cache.clear()

"""Real-time subscriptions, in the data Redis: who is told about which new photos, and where.
Long because add, challenge, match, pause and rotate all keep one record's invariants.

A subscription is to a user's new photos (object ``user``, id: the user id) or to a hashtag in
captions (object ``tag``, id: the tag without '#', lowercased, ``[a-z0-9_]{1,100}``), with a
callback URL (http or https, no user info, at most 2,048 characters) and a signing secret the
farm makes (Standard Webhooks form, ``whsec_`` + base64 of 32 random bytes), shown once at
creation and stored sealed (tasks/core/sealed.py).

Before anything is stored the callback must prove it wants the posts, as Instagram's real-time
API and PubSubHubbub asked: a GET ``?hub.mode=subscribe&hub.challenge=<random>&hub.verify_token=
<token>`` through the SSRF guard, answered 2xx with the challenge as the body. Anything else
(a wrong echo, a 404, a redirect, silence, a refused address) is a ValueError saying which.

Layout (``farm`` standing for FARM_KEY_PREFIX):

- ``farm:webhooks:next_id``: the last id given (INCR);
- ``farm:webhooks:sub:{id}``: hash. ``object``, ``object_id``, ``callback_url``, ``secret``
  (sealed), ``state`` (active | paused), ``failures`` (deliveries failed in a row),
  ``failing_since`` (the oldest event of that run), ``created_at``, ``paused_at``,
  ``paused_reason``, ``last_error``, ``last_error_at``, ``last_ok_at``;
- ``farm:webhooks:subs``: set of every id (the listing, without SCAN);
- ``farm:webhooks:by:user:{id}`` and ``farm:webhooks:by:tag:{tag}``: sets of ids, what a new
  photo is matched through;
- ``farm:webhooks:log:{id}`` and ``farm:webhooks:sent:{id}:{photo}``: the subscription's event
  log and delivered-markers (tasks/webhooks/delivery.py).

match.lua names the hash, log and marker keys from the ids it finds, so they are spelt there as
well as in the key methods below: change both or neither.

State changes that race with deliveries (a failure pausing, a success resetting the count, an
operator's pause or resume) are one script each (state.lua), so none is lost and a subscription
removed meanwhile is never recreated half-way.
"""

from __future__ import annotations

import builtins
import re
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import cast
from urllib.parse import urlencode, urlsplit, urlunsplit

import redis
from redis.typing import EncodableT, FieldT

from config.settings import Settings
from tasks.core import sealed
from tasks.core.errors import PermanentError
from tasks.core.scripts import Script
from tasks.core.validation import valid_user_id
from tasks.webhooks import guard, signing

OBJECTS = ("user", "tag")
ACTIVE, PAUSED = "active", "paused"
_TAG = re.compile(r"[a-z0-9_]{1,100}")
# A '#' not inside a word, then the tag's characters (Unicode word characters, so "#café" is
# read whole and then dropped as not a valid tag, rather than matching "caf").
_CAPTION_TAG = re.compile(r"(?<![\w#&])#(\w+)")
MAX_CAPTION_TAGS = 30  # Instagram's own limit of hashtags on a post; the rest match nothing
MAX_REASON = 500  # characters of a pause reason or error kept
CHALLENGE_BYTES = 24  # random bytes in a challenge (32 characters of URL-safe base64)
MAX_VERIFY_TOKEN = 200  # characters

STATE = Script(__package__, "state.lua")


class UnknownSubscription(PermanentError, LookupError):
    """No subscription with that id (removed, or never made)."""

    def __init__(self, subscription_id: int) -> None:
        super().__init__(f"no webhook subscription {subscription_id}")
        self.subscription_id = subscription_id


class ChallengeFailed(ValueError):
    """The callback did not prove it wants the posts; nothing was stored."""


@dataclass(frozen=True)
class Subscription:
    id: int
    object: str
    object_id: str
    callback_url: str
    state: str
    failures: int  # deliveries failed in a row
    created_at: float
    paused_at: float | None = None  # the last pause (kept after a resume, until the next one)
    paused_reason: str = ""
    failing_since: float | None = None  # the oldest event of the current run of failures
    last_error: str = ""
    last_error_at: float | None = None
    last_ok_at: float | None = None
    sealed_secret: str = field(default="", repr=False)

    @property
    def active(self) -> bool:
        return self.state == ACTIVE

    def secret(self, s: Settings | None = None) -> str:
        """The signing secret, decrypted (SealedUnreadable if no configured key opens it)."""
        return sealed.unseal(self.sealed_secret, s)

    def replay_from(self) -> float | None:
        """Where a replay after resuming starts: the pause, or the oldest event of the run of
        failures that led to it if that is earlier (those were never delivered either)."""
        times = [t for t in (self.paused_at, self.failing_since) if t is not None]
        return min(times) if times else None


def normalise_tag(tag: str) -> str:
    """'#Sunset' -> 'sunset'; ValueError unless it is 1-100 of a-z, 0-9, '_'."""
    if not isinstance(tag, str):
        raise ValueError("tag: must be a string")
    low = tag.strip().removeprefix("#").lower()
    if not _TAG.fullmatch(low):
        raise ValueError(f"tag: must be 1-100 letters a-z, digits or '_' (without '#'), "
                         f"got {tag[:40]!r}")
    return low


def caption_tags(caption: str) -> list[str]:
    """The distinct valid hashtags of a caption, lowercased, in order, at most
    MAX_CAPTION_TAGS."""
    out: list[str] = []
    for match in _CAPTION_TAG.finditer(caption or ""):
        tag = match.group(1).lower()
        if _TAG.fullmatch(tag) and tag not in out:
            out.append(tag)
            if len(out) == MAX_CAPTION_TAGS:
                break
    return out


def normalise_object(obj: str, object_id: str | int) -> tuple[str, str]:
    if obj == "user":
        raw: object = object_id
        if isinstance(object_id, str) and object_id.strip().isdigit():
            raw = int(object_id.strip())
        return obj, str(valid_user_id("user id", raw))
    if obj == "tag":
        return obj, normalise_tag(str(object_id))
    raise ValueError(f"object: must be one of {', '.join(OBJECTS)}, got {obj!r}")


def challenge_url(callback_url: str, challenge: str, verify_token: str) -> str:
    """The callback with the hub.* parameters added to whatever query it already has."""
    parts = urlsplit(callback_url)
    extra = urlencode({"hub.mode": "subscribe", "hub.challenge": challenge,
                       "hub.verify_token": verify_token})
    query = f"{parts.query}&{extra}" if parts.query else extra
    return urlunsplit((parts.scheme, parts.netloc, parts.path or "/", query, ""))


def verify_callback(callback_url: str, verify_token: str, s: Settings) -> None:
    """The challenge handshake; ChallengeFailed saying what went wrong."""
    challenge = secrets.token_urlsafe(CHALLENGE_BYTES)
    try:
        answer = guard.request("GET", challenge_url(callback_url, challenge, verify_token), s=s)
    except guard.Refused as exc:
        raise ChallengeFailed(f"callback refused: {exc}") from None
    except guard.TimedOut:
        raise ChallengeFailed(f"callback did not answer the challenge within "
                              f"{s.webhook_timeout:g}s") from None
    except guard.Unreachable as exc:
        raise ChallengeFailed(f"callback unreachable: {exc}") from None
    if 300 <= answer.status < 400:
        raise ChallengeFailed(f"callback answered the challenge with a redirect (HTTP "
                              f"{answer.status}), which is not followed")
    if not answer.ok:
        raise ChallengeFailed(f"callback answered the challenge with HTTP {answer.status}")
    echoed = answer.body.decode("utf-8", "replace").strip()
    if echoed != challenge:
        raise ChallengeFailed("callback did not echo the challenge (hub.challenge) as its body")


class Subscriptions:
    def __init__(self, r: redis.Redis, s: Settings) -> None:
        self.r, self.s = r, s

    # keys
    def key(self, subscription_id: int) -> str:
        return self.s.key("webhooks", "sub", subscription_id)

    def index_key(self) -> str:
        return self.s.key("webhooks", "subs")

    def by_key(self, obj: str, object_id: str) -> str:
        return self.s.key("webhooks", "by", obj, object_id)

    def log_key(self, subscription_id: int) -> str:
        return self.s.key("webhooks", "log", subscription_id)

    def marker_key(self, subscription_id: int, photo_id: int) -> str:
        return self.s.key("webhooks", "sent", subscription_id, photo_id)

    # the API
    def add(self, obj: str, object_id: str | int, callback_url: str, *, verify: bool = True,
            verify_token: str | None = None) -> tuple[Subscription, str]:
        """A new subscription and its secret (shown this once). The callback is verified first
        (unless ``verify`` is False): ChallengeFailed, a ValueError, and nothing is stored."""
        obj, oid = normalise_object(obj, object_id)
        try:
            guard.check_url(callback_url)
        except ValueError as exc:
            raise ValueError(str(exc)) from None
        if verify_token is not None and not (0 < len(verify_token) <= MAX_VERIFY_TOKEN):
            raise ValueError(f"verify token: must be 1-{MAX_VERIFY_TOKEN} characters")
        if verify:
            verify_callback(callback_url, verify_token or secrets.token_urlsafe(16), self.s)
        secret = signing.new_secret()
        now = time.time()
        sid = int(self.r.incr(self.s.key("webhooks", "next_id")))
        fields: dict[str, str] = {
            "object": obj, "object_id": oid, "callback_url": callback_url,
            "secret": sealed.seal(secret, self.s), "state": ACTIVE, "failures": "0",
            "created_at": repr(now)}
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(self.key(sid), mapping=cast("dict[FieldT, EncodableT]", fields))
        pipe.sadd(self.index_key(), sid)
        pipe.sadd(self.by_key(obj, oid), sid)
        pipe.execute()
        return self.parse(sid, fields), secret

    def get(self, subscription_id: int) -> Subscription:
        raw = cast("dict[str, str]", self.r.hgetall(self.key(subscription_id)))
        if not raw:
            raise UnknownSubscription(subscription_id)
        return self.parse(subscription_id, raw)

    def list(self) -> list[Subscription]:
        ids = sorted(int(i) for i in cast("set[str]", self.r.smembers(self.index_key())))
        return self._load(ids)

    def rotate(self) -> int:
        """Every signing secret resealed under the newest FARM_TOKEN_KEYS key (`farm social
        rotate-keys`); the secrets themselves, and so the subscribers' checks, do not change."""
        done = 0
        for sub in self.list():
            if not sub.sealed_secret:
                continue
            fresh = sealed.reseal(sub.sealed_secret, self.s)
            # only if it still holds what was read: a subscription removed meanwhile stays gone
            if self.r.hget(self.key(sub.id), "secret") == sub.sealed_secret:
                self.r.hset(self.key(sub.id), "secret", fresh)
                done += 1
        return done

    def pause(self, subscription_id: int, reason: str = "paused by an operator") -> Subscription:
        """Pause (deliveries are logged, not sent); an already paused one keeps its paused_at."""
        done = STATE(self.r, [self.key(subscription_id)],
                     ["pause", repr(time.time()), reason[:MAX_REASON]])
        if not done:
            raise UnknownSubscription(subscription_id)
        return self.get(subscription_id)

    def resume(self, subscription_id: int) -> Subscription:
        """Active again, its failure count reset (delivery.resume also queues the replay)."""
        if not STATE(self.r, [self.key(subscription_id)], ["resume"]):
            raise UnknownSubscription(subscription_id)
        return self.get(subscription_id)

    def remove(self, subscription_id: int) -> Subscription:
        """Gone, with its event log (its delivered-markers expire on their own)."""
        sub = self.get(subscription_id)
        pipe = self.r.pipeline(transaction=True)
        pipe.delete(self.key(subscription_id), self.log_key(subscription_id))
        pipe.srem(self.index_key(), subscription_id)
        pipe.srem(self.by_key(sub.object, sub.object_id), subscription_id)
        pipe.execute()
        return sub

    def matching(self, owner_id: int, caption: str) -> builtins.list[Subscription]:
        """Active and paused subscriptions to the owner or to a hashtag of the caption."""
        return self._load(self.matching_ids(owner_id, caption))

    def matching_ids(self, owner_id: int, caption: str) -> builtins.list[int]:
        """The ids of :meth:`matching`, in order: one round trip (SUNION)."""
        keys = [self.by_key("user", str(owner_id))]
        keys += [self.by_key("tag", tag) for tag in caption_tags(caption)]
        return sorted(int(i) for i in cast("set[str]", self.r.sunion(keys)))

    def _load(self, ids: Iterable[int]) -> builtins.list[Subscription]:
        ids = list(ids)
        if not ids:
            return []
        pipe = self.r.pipeline(transaction=False)
        for sid in ids:
            pipe.hgetall(self.key(sid))
        rows = cast("list[dict[str, str]]", pipe.execute())
        return [self.parse(sid, raw) for sid, raw in zip(ids, rows, strict=True) if raw]

    @staticmethod
    def parse(sid: int, raw: Mapping[str, object]) -> Subscription:
        """A subscription from its stored hash."""
        def num(name: str) -> float | None:
            value = raw.get(name)
            return float(str(value)) if value not in (None, "") else None

        return Subscription(
            id=sid, object=str(raw.get("object", "")), object_id=str(raw.get("object_id", "")),
            callback_url=str(raw.get("callback_url", "")), state=str(raw.get("state", ACTIVE)),
            failures=int(str(raw.get("failures") or 0)), created_at=num("created_at") or 0.0,
            paused_at=num("paused_at"), paused_reason=str(raw.get("paused_reason") or ""),
            failing_since=num("failing_since"), last_error=str(raw.get("last_error") or ""),
            last_error_at=num("last_error_at"), last_ok_at=num("last_ok_at"),
            sealed_secret=str(raw.get("secret", "")))

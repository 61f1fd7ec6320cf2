"""Linked accounts: the X account and the Facebook Page each user cross-posts to, in the data
Redis, with their credentials sealed (tasks/core/sealed.py: Fernet under FARM_TOKEN_KEYS).

Layout (``farm`` standing for FARM_KEY_PREFIX):

- ``farm:social:account:{network}:{user_id}``: hash. ``sealed``: the credentials as one sealed
  JSON object (X: the user's OAuth 1.0a access token and secret; Facebook: the Page access
  token); beside it what is not secret: ``name`` (the X handle or the Page's name), ``page_id``
  (Facebook), ``linked_at``;
- ``farm:social:accounts``: set of ``{network}:{user_id}``, every linked account (for the listing
  and for key rotation, without SCAN);
- ``farm:social:unlinked:{network}:{user_id}``: hash, the last unlink: ``at``, ``reason``,
  ``name``; kept UNLINK_KEPT seconds.

Credentials are decrypted in memory only when a post needs them (:meth:`LinkedAccounts.get`),
never logged, never put in a message, and shown masked (:func:`mask`) in reprs and listings.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any, cast

import redis

from config.settings import Settings
from tasks.core import sealed
from tasks.core.validation import NETWORKS, valid_user_id

MAX_TOKEN = 1024  # characters; X tokens are ~50, Facebook Page tokens ~200-300
MAX_PAGE_NAME = 200  # characters (Facebook caps Page names well below this)
MAX_REASON = 500
UNLINK_KEPT = 90 * 86400  # how long the last unlink of an account stays inspectable
_HANDLE = re.compile(r"@?([A-Za-z0-9_]{1,15})")  # X's own rule for handles
_PAGE_ID = re.compile(r"[0-9]{1,30}")
MASK_SHOWN = 4  # leading characters of a secret a listing shows


def mask(secret: str) -> str:
    """The first four characters and an ellipsis; nothing of a secret too short to spare four."""
    return secret[:MASK_SHOWN] + "…" if len(secret) >= 3 * MASK_SHOWN else "…"


@dataclass(frozen=True)
class Account:
    """A linked account with its credentials, decrypted (in memory only). ``secret`` is the X
    access-token secret ("" for Facebook); ``page_id`` the Facebook Page ("" for X); ``name``
    the X handle or the Page's name, possibly ""."""

    user_id: int
    network: str
    token: str
    secret: str = ""
    page_id: str = ""
    name: str = ""
    linked_at: float = 0.0

    def __repr__(self) -> str:
        shown = f"token={mask(self.token)!r}"
        if self.secret:
            shown += f", secret={mask(self.secret)!r}"
        if self.page_id:
            shown += f", page_id={self.page_id!r}"
        return (f"Account(user_id={self.user_id}, network={self.network!r}, {shown}, "
                f"name={self.name!r})")

    __str__ = __repr__

    @property
    def label(self) -> str:
        """How logs and post records name the account: never a credential."""
        if self.network == "facebook":
            return f"page:{self.page_id}" + (f" ({self.name})" if self.name else "")
        return f"@{self.name}" if self.name else f"user:{self.user_id}"


@dataclass(frozen=True)
class Unlinked:
    user_id: int
    network: str
    at: float
    reason: str
    name: str


class LinkedAccounts:
    def __init__(self, r: redis.Redis, s: Settings) -> None:
        self.r, self.s = r, s

    def _key(self, network: str, user_id: int) -> str:
        return self.s.key("social", "account", network, user_id)

    def _index(self) -> str:
        return self.s.key("social", "accounts")

    def _unlinked_key(self, network: str, user_id: int) -> str:
        return self.s.key("social", "unlinked", network, user_id)

    def link_twitter(self, user_id: int, token: str, secret: str, handle: str = "") -> Account:
        """Link (or re-link) the user's X account: its OAuth 1.0a user access token and secret."""
        user_id = valid_user_id("user_id", user_id)
        token = _valid_secret("token", token)
        secret = _valid_secret("secret", secret)
        name = ""
        if handle:
            m = _HANDLE.fullmatch(handle) if isinstance(handle, str) else None
            if m is None:
                raise ValueError("handle: must be an X handle (1-15 letters, digits or '_', "
                                 "optionally after '@')")
            name = m.group(1)
        return self._link(Account(user_id, "twitter", token, secret=secret, name=name,
                                  linked_at=time.time()))

    def link_facebook(self, user_id: int, page_id: str | int, page_token: str,
                      page_name: str = "") -> Account:
        """Link (or re-link) the user's Facebook Page: its id and a Page access token. (Posting to
        personal timelines ended in 2018: Pages only.)"""
        user_id = valid_user_id("user_id", user_id)
        if isinstance(page_id, int) and not isinstance(page_id, bool):
            page_id = str(page_id)
        if not isinstance(page_id, str) or not _PAGE_ID.fullmatch(page_id):
            raise ValueError("page_id: must be a Facebook Page id (1-30 digits)")
        page_token = _valid_secret("page_token", page_token)
        if not isinstance(page_name, str) or len(page_name) > MAX_PAGE_NAME or (
                page_name and not page_name.isprintable()):
            raise ValueError(f"page_name: must be printable text of at most {MAX_PAGE_NAME} "
                             "characters")
        return self._link(Account(user_id, "facebook", page_token, page_id=page_id,
                                  name=page_name.strip(), linked_at=time.time()))

    def _link(self, account: Account) -> Account:
        credentials = {"token": account.token}
        if account.network == "twitter":
            credentials["secret"] = account.secret
        pipe = self.r.pipeline(transaction=True)
        pipe.delete(self._key(account.network, account.user_id))
        pipe.hset(self._key(account.network, account.user_id), mapping={
            "sealed": sealed.seal(json.dumps(credentials), self.s), "name": account.name,
            "page_id": account.page_id, "linked_at": f"{account.linked_at:.3f}"})
        pipe.sadd(self._index(), f"{account.network}:{account.user_id}")
        pipe.execute()
        return account

    def get(self, user_id: int, network: str) -> Account | None:
        """The account with its credentials decrypted, or None if none is linked.
        SealedUnreadable (permanent) if no configured key opens it."""
        raw = cast("dict[str, str]", self.r.hgetall(self._key(network, user_id)))
        if not raw:
            return None
        return _account(user_id, network, raw, json.loads(sealed.unseal(raw["sealed"], self.s)))

    def unlink(self, user_id: int, network: str, reason: str = "unlinked by the user") -> bool:
        """Forget the account; True if one was linked. Why and when is kept
        (:meth:`last_unlink`)."""
        _valid_network(network)
        reason = " ".join(str(reason).split())[:MAX_REASON] or "unlinked"
        key = self._key(network, user_id)
        name = cast("str | None", self.r.hget(key, "name"))
        if name is None:  # nothing linked: the last unlink's record stays as it was
            self.r.srem(self._index(), f"{network}:{user_id}")
            return False
        pipe = self.r.pipeline(transaction=True)
        pipe.delete(key)
        pipe.srem(self._index(), f"{network}:{user_id}")
        gone = self._unlinked_key(network, user_id)
        pipe.hset(gone, mapping={"at": f"{time.time():.3f}", "reason": reason, "name": name})
        pipe.expire(gone, UNLINK_KEPT)
        deleted = pipe.execute()[0]
        return bool(deleted)

    def last_unlink(self, user_id: int, network: str) -> Unlinked | None:
        raw = cast("dict[str, str]", self.r.hgetall(self._unlinked_key(network, user_id)))
        if not raw:
            return None
        return Unlinked(user_id, network, float(raw["at"]), raw["reason"], raw.get("name", ""))

    def linked(self) -> list[tuple[str, int]]:
        """(network, user id) of every linked account, sorted."""
        members = cast("set[str]", self.r.smembers(self._index()))
        out = []
        for member in members:
            network, _, user = member.partition(":")
            out.append((network, int(user)))
        return sorted(out, key=lambda nu: (nu[1], nu[0]))

    def listing(self) -> list[dict[str, Any]]:
        """One row per linked account, credentials masked (an unreadable one says so)."""
        rows = []
        for network, user_id in self.linked():
            raw = cast("dict[str, str]", self.r.hgetall(self._key(network, user_id)))
            if not raw:
                continue
            row: dict[str, Any] = {"user_id": user_id, "network": network,
                                   "name": raw.get("name", ""), "page_id": raw.get("page_id", ""),
                                   "linked_at": float(raw.get("linked_at") or 0)}
            try:
                creds = json.loads(sealed.unseal(raw["sealed"], self.s))
            except sealed.SealedUnreadable:
                row["token"] = "(unreadable with FARM_TOKEN_KEYS)"
            else:
                row["token"] = mask(creds["token"])
                if network == "twitter":
                    row["secret"] = mask(creds["secret"])
            rows.append(row)
        return rows

    def rotate(self) -> int:
        """Reseal every account's credentials under the newest key (MultiFernet.rotate); how
        many were resealed. An account linked or unlinked meanwhile is left as it now is.
        SealedUnreadable after the rest are done if some could not be opened."""
        done, unreadable = 0, 0
        for network, user_id in self.linked():
            key = self._key(network, user_id)
            try:
                if self._reseal(key):
                    done += 1
            except sealed.SealedUnreadable:
                unreadable += 1
        if unreadable:
            raise sealed.SealedUnreadable(
                f"{unreadable} account(s) unreadable with FARM_TOKEN_KEYS (was their key dropped "
                f"before rotating?); {done} resealed")
        return done

    def _reseal(self, key: str) -> bool:
        with self.r.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(key)  # type: ignore[no-untyped-call]
                    old = cast("str | None", pipe.hget(key, "sealed"))
                    if old is None:
                        pipe.unwatch()
                        return False
                    new = sealed.reseal(old, self.s)
                    pipe.multi()
                    pipe.hset(key, "sealed", new)
                    pipe.execute()
                    return True
                except redis.WatchError:
                    continue  # linked again meanwhile: reseal what is there now


def _account(user_id: int, network: str, raw: dict[str, str], creds: dict[str, str]) -> Account:
    return Account(user_id, network, creds["token"], secret=creds.get("secret", ""),
                   page_id=raw.get("page_id", ""), name=raw.get("name", ""),
                   linked_at=float(raw.get("linked_at") or 0))


def _valid_network(network: str) -> None:
    if network not in NETWORKS:
        raise ValueError(f"network: must be one of {', '.join(NETWORKS)}, got {network!r}")


def _valid_secret(name: str, value: object) -> str:
    """A credential: 1 to MAX_TOKEN printable ASCII characters, no spaces. The error never shows
    the value."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name}: must be a non-empty string")
    if len(value) > MAX_TOKEN:
        raise ValueError(f"{name}: must be at most {MAX_TOKEN} characters, got {len(value)}")
    if not (value.isascii() and value.isprintable()) or " " in value:
        raise ValueError(f"{name}: must be printable ASCII without spaces")
    return value

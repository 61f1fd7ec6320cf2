"""Locks in the data Redis: redis-py's ``Lock`` (SET NX PX with a random token; release and
extend compare the token in Lua), used non-blocking and shared across threads.

The only thing added is the token's content, ``host:pid:random``, so a run that finds a lock
taken can say who holds it (redis-py's default token is an anonymous uuid).
"""

from __future__ import annotations

import os
import secrets
import socket

import redis
from redis.exceptions import LockError, LockNotOwnedError
from redis.lock import Lock

__all__ = ["Lock", "LockError", "LockNotOwnedError", "holder", "owner_token", "try_lock"]


def owner_token() -> str:
    """Random so only this owner holds it; host and pid so others can say who does."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(8)}"


def try_lock(client: redis.Redis, key: str, ttl_seconds: float) -> Lock | None:
    """The lock, held for ``ttl_seconds``; None when another owner holds it."""
    lock = client.lock(key, timeout=ttl_seconds, blocking=False, thread_local=False)
    return lock if lock.acquire(token=owner_token()) else None


def holder(client: redis.Redis, key: str) -> str | None:
    """The current owner's token (host:pid:random), or None when free."""
    value = client.get(key)
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)

"""A run lock in the data Redis, so a batch job never overlaps itself.

SET NX PX with a random token; release and renewal compare the token first, in one Lua step, so a
run whose lock expired and was taken by another can never delete or extend the other's lock.
"""

from __future__ import annotations

import os
import secrets
import socket

import redis

# KEYS[1] lock key, ARGV[1] token: delete only if we still own it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# KEYS[1] lock key, ARGV[1] token, ARGV[2] ttl ms: extend only if we still own it.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


class LockLost(RuntimeError):
    """The lock expired under a running job (and may now be another run's)."""


class RunLock:
    def __init__(self, client: redis.Redis, key: str, ttl_seconds: float) -> None:
        self.r = client
        self.key = key
        self.ttl_ms = int(ttl_seconds * 1000)
        # Random so only this run owns it; host and pid so a skipped run can say who holds it.
        self.token = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(8)}"

    def acquire(self) -> bool:
        return bool(self.r.set(self.key, self.token, nx=True, px=self.ttl_ms))

    def release(self) -> bool:
        """True if this owner's lock was deleted; False if it had expired or is another's."""
        return bool(self.r.eval(_RELEASE, 1, self.key, self.token))

    def renew(self) -> None:
        """Push the expiry a full TTL ahead; LockLost if the lock is no longer ours."""
        if not self.r.eval(_RENEW, 1, self.key, self.token, self.ttl_ms):
            raise LockLost(f"lock {self.key} expired or was taken while the job ran")

    def holder(self) -> str | None:
        """The current owner's token (host:pid:random), or None when free."""
        value = self.r.get(self.key)
        return str(value) if value is not None else None

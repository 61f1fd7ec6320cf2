"""The device registry in the data Redis: which apps' devices each user has, since when.

  {p}:devices:{uid}            hash, field "{app_id} {token}" -> registration Unix time
  {p}:device:{app_id}:{token}  the user a device token belongs to (a token is one device: it
                               moves with a re-registration, it is never on two users)

Apple's 410 Unregistered carries the time the token stopped being valid; a registration newer
than that (the app reinstalled, the token re-registered) must survive it, hence the time.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import redis

from config.settings import Settings
from tasks.core.scripts import Script

TOKEN = re.compile(r"[0-9a-f]{64,200}")  # APNs device tokens: hex, 32 bytes today
APP_ID = re.compile(r"[A-Za-z0-9.\-]{1,155}")  # a bundle id


@dataclass(frozen=True)
class Device:
    user_id: int
    app_id: str
    token: str
    registered_at: float


REGISTER = Script(__package__, "register_device.lua")
PRUNE = Script(__package__, "prune_device.lua")


def check_token(token: str) -> str:
    if not isinstance(token, str) or not TOKEN.fullmatch(token):
        raise ValueError("device token must be 64-200 lowercase hex characters")
    return token


def check_app(app_id: str) -> str:
    if not isinstance(app_id, str) or not APP_ID.fullmatch(app_id):
        raise ValueError(f"app id must be a bundle id, got {app_id!r}")
    return app_id


class DeviceRegistry:
    def __init__(self, client: redis.Redis, s: Settings) -> None:
        self.r = client
        self.devices_prefix = s.key("devices") + ":"
        self.owner_prefix = s.key("device") + ":"

    def _owner_key(self, app_id: str, token: str) -> str:
        return f"{self.owner_prefix}{app_id}:{token}"

    def register(self, user_id: int, app_id: str, token: str, when: float | None = None) -> None:
        field = f"{check_app(app_id)} {check_token(token)}"
        REGISTER(self.r, [self._owner_key(app_id, token), f"{self.devices_prefix}{user_id}"],
                 [self.devices_prefix, field, user_id, repr(time.time() if when is None else when)])

    def unregister(self, app_id: str, token: str) -> bool:
        return self.prune(app_id, token)

    def prune(self, app_id: str, token: str, invalid_since: float | None = None) -> bool:
        """Remove a dead token; with ``invalid_since`` (Apple's 410 timestamp, in seconds) only
        when it was registered before that. True if removed."""
        return bool(PRUNE(self.r, [self._owner_key(app_id, token)],
                          [self.devices_prefix, f"{app_id} {token}",
                           "" if invalid_since is None else repr(invalid_since)]))

    def devices(self, user_ids: list[int]) -> list[Device]:
        pipe = self.r.pipeline(transaction=False)
        for uid in user_ids:
            pipe.hgetall(f"{self.devices_prefix}{uid}")
        out = []
        for uid, fields in zip(user_ids, pipe.execute(), strict=True):
            for field, at in sorted(fields.items()):
                app_id, _, token = field.partition(" ")
                out.append(Device(uid, app_id, token, float(at)))
        return out

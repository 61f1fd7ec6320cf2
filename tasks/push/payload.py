"""APNs payloads: the `aps` dictionary plus custom keys, refused before sending when too big."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from tasks.core.errors import PermanentError

MAX_PAYLOAD = 4096  # Apple's limit for every push type but VoIP


class PayloadTooLarge(PermanentError):
    pass


def build_payload(alert: str | Mapping[str, Any] | None = None, *, badge: int | None = None,
                  sound: str | None = None, content_available: bool = False,
                  data: Mapping[str, Any] | None = None) -> bytes:
    """Compact JSON; PayloadTooLarge (permanent: retrying cannot shrink it) over 4096 bytes."""
    aps: dict[str, Any] = {}
    if alert is not None:
        aps["alert"] = alert
    if badge is not None:
        aps["badge"] = badge
    if sound is not None:
        aps["sound"] = sound
    if content_available:
        aps["content-available"] = 1
    custom = dict(data or {})
    if "aps" in custom:
        raise PermanentError("custom data must not use the reserved key 'aps'")
    body = json.dumps({"aps": aps, **custom}, separators=(",", ":"), ensure_ascii=False)
    encoded = body.encode()
    if len(encoded) > MAX_PAYLOAD:
        raise PayloadTooLarge(f"payload is {len(encoded)} bytes, over APNs' {MAX_PAYLOAD}-byte "
                              "limit")
    return encoded


def push_type(alert: object, content_available: bool) -> str:
    """Apple requires apns-push-type: alert when anything is shown, else background."""
    return "alert" if alert is not None else "background" if content_available else "alert"

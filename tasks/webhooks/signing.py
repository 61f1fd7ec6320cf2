"""What a subscriber receives: a small JSON body and the Standard Webhooks headers that sign it.

Standard Webhooks (standardwebhooks.com; the ``standardwebhooks`` package signs): three headers,
``webhook-id``, ``webhook-timestamp`` (Unix seconds) and ``webhook-signature``
(``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``, keyed with the subscription's secret,
``whsec_`` + base64 of 32 random bytes). Receivers in any language verify it with the scheme's
libraries, and refuse a timestamp more than 5 minutes off, which is what stops a replayed request.

The id is stable per (subscription, photo): a task's retry, a redelivery and an operator's
replay all carry the same one, so a receiver that keeps the ids it has seen drops the rare
duplicate that at-least-once delivery allows. The body is the same each time too (its timestamp
is the event's, from the subscription's event log); only the header timestamp is "now".

The body names the photo and links to it; no caption, no image: a subscriber fetches what it may
see through the public API, as Instagram's real-time API did.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from standardwebhooks.webhooks import Webhook

from config.settings import Settings

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32  # 256 bits: the key size of HMAC-SHA256
EVENT_TYPE = "photo.created"


@dataclass(frozen=True)
class Event:
    """One new photo for one subscription; ``at`` is when the farm first logged it."""

    subscription_id: int
    object: str  # "user" | "tag"
    object_id: str
    photo_id: int
    owner_id: int
    at: float


def new_secret() -> str:
    """A fresh signing secret in Standard Webhooks form."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def message_id(subscription_id: int, photo_id: int) -> str:
    """The webhook-id: the same for every attempt and replay of one photo to one subscription."""
    return f"msg_{subscription_id}_{photo_id}"


def body(event: Event, s: Settings) -> str:
    """The JSON body: compact, ids of 64 bits as strings (JavaScript's numbers stop at 2**53)."""
    when = datetime.fromtimestamp(event.at, UTC).isoformat(timespec="milliseconds")
    return json.dumps({
        "type": EVENT_TYPE,
        "timestamp": when.replace("+00:00", "Z"),
        "data": {
            "subscription_id": event.subscription_id,
            "object": event.object,
            "object_id": event.object_id,
            "photo_id": str(event.photo_id),
            "owner_id": event.owner_id,
            "link": s.photo_link.format(photo_id=event.photo_id),
        },
    }, separators=(",", ":"))


def headers(secret: str, msg_id: str, payload: str, now: float | None = None) -> dict[str, str]:
    """The Standard Webhooks headers for ``payload`` (and its content type)."""
    stamp = int(time.time() if now is None else now)
    signature = Webhook(secret).sign(msg_id, datetime.fromtimestamp(stamp, UTC), payload)
    return {
        "Content-Type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(stamp),
        "webhook-signature": signature,
    }

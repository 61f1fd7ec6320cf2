"""The web tier's way in: typed functions that validate, then send by stable task name.

Imports only Celery and the farm's config: never Pillow, boto3 or any worker module, so the web
tier stays light. Every function raises ``ValueError`` before anything is sent when an argument
is wrong, and returns the task id.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from config.celery_app import app
from config.queues import ROUTES
from tasks.blobs.base import check_key

NETWORKS = ("twitter", "facebook")
ACTIVITY_KINDS = ("like", "comment", "follow", "mention")
PHOTO_KINDS = ("like", "comment")  # about a photo: the entry must name it
MAX_ID = 2**63 - 1  # ids are signed 64-bit integers (time, shard, sequence)
MAX_KEY_LEN = 512
MAX_CAPTION = 2200  # Instagram's caption limit
MAX_ALERT = 1000  # leaves room for the rest of APNs' 4096-byte payload
MAX_NOTIFY_USERS = 100  # one small message, and one small retry if a batch fails
MAX_DATA_BYTES = 1024


def _id(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer id, got {type(value).__name__}")
    if not 0 < value <= MAX_ID:
        raise ValueError(f"{name} must be between 1 and 2**63-1, got {value}")
    return value


def _text(name: str, value: Any, limit: int, *, required: bool = False) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise ValueError(f"{name} must not be empty")
    if len(value) > limit:
        raise ValueError(f"{name} is {len(value)} characters, over the limit of {limit}")
    if "\x00" in value:
        raise ValueError(f"{name} must not contain NUL characters")
    return value


def _storage_key(value: Any) -> str:
    key = _text("original_key", value, MAX_KEY_LEN, required=True)
    try:  # the blob store's own rule, so a key it would refuse never reaches a worker
        return check_key(key)
    except ValueError as exc:
        raise ValueError(f"original_key: {exc}") from None


def _send(name: str, kwargs: dict[str, Any]) -> str:
    return str(app.send_task(name, kwargs=kwargs, queue=ROUTES[name]).id)


def validate_photo_uploaded(photo_id: int, owner_id: int, original_key: str,
                            caption: str = "", share_to: Iterable[str] = ()) -> dict[str, Any]:
    """photo_uploaded's arguments, checked and normalised; ValueError naming the bad one."""
    if isinstance(share_to, str):
        raise ValueError("share_to must be a list of networks, not a string")
    networks = list(dict.fromkeys(share_to))
    unknown = [n for n in networks if n not in NETWORKS]
    if unknown:
        raise ValueError(f"share_to has unknown network(s) {unknown}; known: {list(NETWORKS)}")
    return {
        "photo_id": _id("photo_id", photo_id),
        "owner_id": _id("owner_id", owner_id),
        "original_key": _storage_key(original_key),
        "caption": _text("caption", caption, MAX_CAPTION),
        "share_to": networks,
    }


def photo_uploaded(photo_id: int, owner_id: int, original_key: str, caption: str = "",
                   share_to: Iterable[str] = ()) -> str:
    """A new photo's original is in the blob store: make its variants, then spread it."""
    return _send("photos.process", validate_photo_uploaded(photo_id, owner_id, original_key,
                                                           caption, share_to))


def _follow_args(follower_id: int, followee_id: int) -> dict[str, int]:
    args = {"follower_id": _id("follower_id", follower_id),
            "followee_id": _id("followee_id", followee_id)}
    if follower_id == followee_id:
        raise ValueError("a user cannot follow themselves")
    return args


def user_followed(follower_id: int, followee_id: int) -> str:
    """Backfill the followee's recent photos into the follower's feed."""
    return _send("feeds.follow", _follow_args(follower_id, followee_id))


def user_unfollowed(follower_id: int, followee_id: int) -> str:
    """Take the followee's photos out of the follower's feed."""
    return _send("feeds.unfollow", _follow_args(follower_id, followee_id))


def photo_deleted(photo_id: int, owner_id: int) -> str:
    """Remove a deleted photo from every feed it reached (batch work, low priority)."""
    return _send("feeds.photo_deleted", {"photo_id": _id("photo_id", photo_id),
                                         "owner_id": _id("owner_id", owner_id)})


def rebuild_feed(user_id: int) -> str:
    """Rebuild a user's feed from the people they follow (batch work, low priority)."""
    return _send("feeds.rebuild", {"user_id": _id("user_id", user_id)})


def validate_activity(user_id: int, kind: str, actor_id: int,
                      photo_id: int | None = None) -> dict[str, Any]:
    """activity's arguments, checked; the worker runs the same checks on what it receives."""
    if not isinstance(kind, str) or kind not in ACTIVITY_KINDS:
        raise ValueError(f"kind must be one of {list(ACTIVITY_KINDS)}, got {kind!r}")
    if kind in PHOTO_KINDS and photo_id is None:
        raise ValueError(f"a {kind} activity needs the photo_id it is about")
    if kind == "follow" and photo_id is not None:
        raise ValueError("a follow activity is about no photo; photo_id must be None")
    return {"user_id": _id("user_id", user_id), "kind": kind,
            "actor_id": _id("actor_id", actor_id),
            "photo_id": None if photo_id is None else _id("photo_id", photo_id)}


def activity(user_id: int, kind: str, actor_id: int, photo_id: int | None = None) -> str:
    """Add an entry to a user's activity feed: ``actor_id`` liked, commented on, or mentioned them
    in ``photo_id``, or followed them. The fresh event id makes a redelivered message a no-op."""
    kwargs = validate_activity(user_id, kind, actor_id, photo_id)
    return _send("feeds.activity", {**kwargs, "event_id": uuid.uuid4().hex})


def notify_users(user_ids: Iterable[int], alert: str | None = None, badge: int | None = None,
                 sound: str | None = None, data: Mapping[str, Any] | None = None, *,
                 content_available: bool = False, priority: int | None = None,
                 expiration: int | None = None, collapse_id: str | None = None) -> str:
    """Push one notification to every registered device of these users (each device once,
    however often the task is delivered)."""
    if isinstance(user_ids, (str, bytes)):
        raise ValueError("user_ids must be a list of integer ids")
    ids = list(dict.fromkeys(_id("user_ids[]", u) for u in user_ids))
    if not ids:
        raise ValueError("user_ids must not be empty")
    if len(ids) > MAX_NOTIFY_USERS:
        raise ValueError(f"user_ids has {len(ids)} users, over {MAX_NOTIFY_USERS} per call; "
                         "split the list")
    if alert is None and not content_available and badge is None:
        raise ValueError("a notification needs an alert, a badge or content_available")
    if alert is not None:
        _text("alert", alert, MAX_ALERT, required=True)
    if badge is not None and (isinstance(badge, bool) or not isinstance(badge, int) or badge < 0):
        raise ValueError(f"badge must be a non-negative integer, got {badge!r}")
    if sound is not None:
        _text("sound", sound, 64, required=True)
    if priority not in (None, 1, 5, 10):
        raise ValueError(f"priority must be 10, 5 or 1, got {priority!r}")
    if expiration is not None and (isinstance(expiration, bool) or not isinstance(expiration, int)
                                   or expiration < 0):
        raise ValueError(f"expiration must be a Unix time in seconds, got {expiration!r}")
    if collapse_id is not None and not 0 < len(collapse_id.encode()) <= 64:
        raise ValueError("collapse_id must be 1 to 64 bytes")
    payload = dict(data or {})
    try:
        encoded = json.dumps(payload, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"data must be plain JSON: {exc}") from None
    if len(encoded) > MAX_DATA_BYTES:
        raise ValueError(f"data is {len(encoded)} bytes of JSON, over {MAX_DATA_BYTES}")
    return _send("push.notify", {
        "user_ids": ids, "alert": alert, "notification_id": uuid.uuid4().hex, "badge": badge,
        "sound": sound, "data": payload, "content_available": content_available,
        "priority": priority, "expiration": expiration, "collapse_id": collapse_id})

"""The web tier's way in: typed functions that check, then send by stable task name.

Imports only Celery, the farm's config and the one validation module the tasks check their own
arguments with (tasks/core/validation.py): never Pillow, boto3 or any domain's code, so the web
tier stays light, and what it sends a worker never refuses. Every function raises ``ValueError``
(``InvalidArgument``, naming the argument) before anything is sent, and returns the task id.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from config.celery_app import app
from config.queues import ROUTES
from tasks.core.validation import (
    ACTIVITY_KINDS,
    MAX_ALERT,
    MAX_CAPTION,
    MAX_NOTIFY_USERS,
    MAX_PHOTO_ID,
    MAX_USER_ID,
    NETWORKS,
    InvalidArgument,
    check,
)

__all__ = [
    "ACTIVITY_KINDS", "MAX_ALERT", "MAX_CAPTION", "MAX_NOTIFY_USERS", "MAX_PHOTO_ID",
    "MAX_USER_ID", "NETWORKS", "InvalidArgument", "activity", "message", "notify_users",
    "photo_deleted", "photo_uploaded", "rebuild_feed", "user_followed", "user_unfollowed",
]


def message(task: str, **kwargs: Any) -> dict[str, Any]:
    """The keyword arguments a task would run with, checked exactly as its worker checks them."""
    return check(task, (), kwargs)


def _listed(value: Any) -> Any:
    """A Python collection as the JSON list a message holds (a string stays, to be refused)."""
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        return value
    return list(value)


def _send(task: str, **kwargs: Any) -> str:
    return str(app.send_task(task, kwargs=message(task, **kwargs), queue=ROUTES[task]).id)


def photo_uploaded(photo_id: int, owner_id: int, original_key: str, caption: str = "",
                   share_to: Iterable[str] = ()) -> str:
    """A new photo's original is in the blob store: make its variants, then spread it."""
    return _send("photos.process", photo_id=photo_id, owner_id=owner_id,
                 original_key=original_key, caption=caption, share_to=_listed(share_to))


def user_followed(follower_id: int, followee_id: int) -> str:
    """Backfill the followee's recent photos into the follower's feed."""
    return _send("feeds.follow", follower_id=follower_id, followee_id=followee_id)


def user_unfollowed(follower_id: int, followee_id: int) -> str:
    """Take the followee's photos out of the follower's feed."""
    return _send("feeds.unfollow", follower_id=follower_id, followee_id=followee_id)


def photo_deleted(photo_id: int, owner_id: int) -> str:
    """Remove a deleted photo from every feed it reached (batch work, low priority)."""
    return _send("feeds.photo_deleted", photo_id=photo_id, owner_id=owner_id)


def rebuild_feed(user_id: int) -> str:
    """Rebuild a user's feed from the people they follow (batch work, low priority)."""
    return _send("feeds.rebuild", user_id=user_id)


def activity(user_id: int, kind: str, actor_id: int, photo_id: int | None = None) -> str:
    """Add an entry to a user's activity feed: ``actor_id`` liked, commented on, or mentioned them
    in ``photo_id``, or followed them. The fresh event id makes a redelivered message a no-op."""
    return _send("feeds.activity", user_id=user_id, kind=kind, actor_id=actor_id,
                 event_id=uuid.uuid4().hex, photo_id=photo_id)


def notify_users(user_ids: Iterable[int], alert: str | None = None, badge: int | None = None,
                 sound: str | None = None, data: Mapping[str, Any] | None = None, *,
                 content_available: bool = False, priority: int | None = None,
                 expiration: int | None = None, collapse_id: str | None = None) -> str:
    """Push one notification to every registered device of these users (each device once,
    however often the task is delivered)."""
    return _send("push.notify", user_ids=_listed(user_ids), alert=alert,
                 notification_id=uuid.uuid4().hex, badge=badge, sound=sound,
                 data=dict(data) if isinstance(data, Mapping) else data,
                 content_available=content_available, priority=priority,
                 expiration=expiration, collapse_id=collapse_id)

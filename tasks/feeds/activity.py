"""A user's activity list: likes, comments, follows and mentions, newest first, capped, each
event added once however often its task runs."""

from __future__ import annotations

import json
import time

from config.settings import get_settings
from tasks.core.scripts import Script
from tasks.feeds.store import feed_store

ADD_ACTIVITY = Script(__package__, "activity.lua")


def add_activity(user_id: int, kind: str, actor_id: int, event_id: str,
                 photo_id: int | None) -> bool:
    """Add one entry to the user's activity list, unless this event was added before; the list
    stays capped at activity_cap. Returns whether it was added."""
    s = get_settings()
    store = feed_store(s)
    entry = json.dumps({"kind": kind, "actor": actor_id, "photo": photo_id, "event": event_id,
                        "at": int(time.time())}, separators=(",", ":"))
    marker = f"{store.activity_key(user_id)}:seen:{event_id}"
    shard = store.shard_for(user_id)
    return bool(ADD_ACTIVITY(shard, [marker, store.activity_key(user_id)],
                             [s.marker_ttl, entry, s.activity_cap]))

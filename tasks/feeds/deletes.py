"""Deletes: a photo tombstoned, then taken out of every feed it reached, a chunk of followers
per task on the batch queue. Safe to run twice."""

from __future__ import annotations

import logging
from typing import cast

from config.settings import get_settings
from tasks.core import publish
from tasks.core.jobs import Result
from tasks.core.scripts import Script
from tasks.feeds.store import feed_store

log = logging.getLogger("farm.feeds")

DELETE_PHOTO = Script(__package__, "delete_photo.lua")


def delete_photo(photo_id: int, owner_id: int) -> Result:
    """Tombstone the photo, take it out of the owner's posts and feed, then enqueue one
    feeds.delete_chunk per feed_chunk_size followers (by follower id, as fan-out walks them)."""
    s = get_settings()
    store = feed_store(s)
    # First, so a fan-out, backfill or rebuild that writes from now on skips the photo: each
    # checks the tombstone on the feed shard in the same atomic step as its write.
    for client in {id(c): c for c in [store.graph, *store.shards]}.values():
        client.set(store.tombstone_key(photo_id), "1", ex=s.marker_ttl)
    store.graph.lrem(store.posts_key(owner_id), 0, str(photo_id))
    own = store.shard_for(owner_id)
    DELETE_PHOTO(own, [store.feed_key(owner_id)], [photo_id])

    size, chunks = store.follower_chunks(owner_id, s.feed_chunk_size)
    with publish.batch() as producer:
        for lo, hi in chunks:
            publish.send("feeds.delete_chunk", {
                "photo_id": photo_id, "owner_id": owner_id, "lo": lo, "hi": hi},
                producer=producer)
    log.info("photo=%d deleted followers=%d chunks=%d", photo_id, size, len(chunks))
    return {"photo_id": photo_id, "followers": size, "chunks": len(chunks)}


def delete_chunk(photo_id: int, owner_id: int, lo: int, hi: int) -> int:
    """Remove the photo from the feeds of the owner's followers with ids in (lo, hi]: one script
    per feed shard. Returns how many entries went."""
    s = get_settings()
    store = feed_store(s)
    members = cast("list[str]",
                   store.graph.zrangebyscore(store.followers_key(owner_id), f"({lo}", hi))
    removed = 0
    for index, uids in store.by_shard(int(m) for m in members).items():
        shard = store.shards[index]
        removed += int(DELETE_PHOTO(shard, [store.feed_key(u) for u in uids], [photo_id]))
    return removed

"""Move feeds to the shard they hash to, after a shard was added (README: "Adding a feed
shard"). Safe to run twice and while the farm runs: each moved feed is merged into its new home
by the backfill script (ordered, deduplicated, capped, tombstones honoured), then the old copy is
deleted."""

from __future__ import annotations

from collections.abc import Callable

from tasks.core.scan import SCAN_COUNT
from tasks.core.scripts import Script
from tasks.feeds.follows import LISTS
from tasks.feeds.store import FeedStore

APPEND_OLDER = Script(__package__, "append_older.lua")



def _user(key: str) -> int | None:
    tail = key.rsplit(":", 1)[-1]
    return int(tail) if tail.isdigit() else None


def rebalance(store: FeedStore, progress: Callable[[int, int], None] = lambda i, n: None) -> int:
    """Move every misplaced feed and activity list; returns how many keys moved."""
    s = store.s
    moved = 0
    for index, shard in enumerate(store.shards):
        count = 0
        for kind in ("feed", "activity"):
            pattern = f"{s.key_prefix}:{kind}:*"
            for key in shard.scan_iter(match=pattern, count=SCAN_COUNT, _type="list"):
                uid = _user(key)
                if uid is None or store.shard_index(uid) == index:
                    continue
                entries = shard.lrange(key, 0, -1)
                target = store.shard_for(uid)
                if entries and kind == "feed":
                    LISTS(target, [store.feed_key(uid)],
                          ["backfill", s.feed_cap, store.tombstone_key(""), *entries])
                elif entries:
                    APPEND_OLDER(target, [store.activity_key(uid)], [s.activity_cap, *entries])
                shard.delete(key)
                count += 1
        progress(index, count)
        moved += count
    return moved

"""Move feeds to the shard they hash to, after a shard was added (README: "Adding a feed
shard"). Safe to run twice and while the farm runs: each moved feed is merged into its new home
by the backfill script (ordered, deduplicated, capped, tombstones honoured), then the old copy is
deleted."""

from __future__ import annotations

from collections.abc import Callable

from tasks.feed_store import FeedStore, lua
from tasks.feed_upkeep import BACKFILL_LUA

SCAN_COUNT = 1000

# KEYS[1] the activity list on its new shard; ARGV[1] cap, then the old entries newest first.
# They are older than anything written on the new shard since the switch, so they go after.
_APPEND_OLDER = """
local cap = tonumber(ARGV[1])
for k = 2, #ARGV, 4000 do
  redis.call('RPUSH', KEYS[1], unpack(ARGV, k, math.min(k + 3999, #ARGV)))
end
if redis.call('LLEN', KEYS[1]) > cap then redis.call('LTRIM', KEYS[1], 0, cap - 1) end
return 1
"""


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
                    lua(target, BACKFILL_LUA)(keys=[store.feed_key(uid)],
                                               args=[s.feed_cap, store.tombstone_key(""), *entries])
                elif entries:
                    lua(target, _APPEND_OLDER)(keys=[store.activity_key(uid)],
                                                   args=[s.activity_cap, *entries])
                shard.delete(key)
                count += 1
        progress(index, count)
        moved += count
    return moved

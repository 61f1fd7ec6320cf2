"""Feed rebuilds: a user's feed made again from the newest posts of everyone they follow, keeping
what fan-out writes meanwhile; and the on-demand feed-rebuild batch job."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from typing import cast

import redis

from config.settings import Settings, get_settings
from tasks.core.ids import make_id
from tasks.core.jobs import Progress, Result, no_progress
from tasks.feeds.follows import LISTS, newest_first
from tasks.feeds.store import FeedStore, feed_store

log = logging.getLogger("farm.feeds")

PIPELINE_BATCH = 500  # followees' post lists read per round trip in a rebuild
# A rebuild keeps what fan-out writes while it runs: entries that were not in the feed when it
# looked (exact, given fan-out records the post before any feed), and, as insurance against a
# writer in another order or a skewed clock, entries whose id is this recent.
REBUILD_MARGIN_MS = 60_000


def _live(store: FeedStore, s: Settings, ids: list[str]) -> list[str]:
    """The ids whose photo has no tombstone (one MGET)."""
    dead = store.graph.mget([store.tombstone_key(x) for x in ids])
    return [x for x, d in zip(ids, dead, strict=True) if d is None]


def _recent_posts(store: FeedStore, uids: list[int], n: int) -> Iterator[str]:
    for start in range(0, len(uids), PIPELINE_BATCH):
        pipe = store.graph.pipeline(transaction=False)
        for uid in uids[start:start + PIPELINE_BATCH]:
            pipe.lrange(store.posts_key(uid), 0, n - 1)
        for posts in pipe.execute():
            yield from posts


def rebuild_feed(user_id: int) -> int:
    """Rebuild the user's feed from the newest posts of everyone they follow (and their own);
    returns its new length. Posts a fan-out writes while this runs are kept."""
    s = get_settings()
    store = feed_store(s)
    shard, feed = store.shard_for(user_id), store.feed_key(user_id)
    # What the feed held before the snapshot: anything else in it at write time landed during.
    before = shard.lrange(feed, 0, -1)
    floor = make_id(int(time.time() * 1000) - REBUILD_MARGIN_MS, 0, 0)
    following = [int(m) for m in
                 cast("list[str]", store.graph.zrange(store.following_key(user_id), 0, -1))]
    ids = newest_first(_recent_posts(store, [user_id, *following], s.feed_backfill))
    # Deleted photos out before capping (the script checks again, atomically), taking a feed's
    # worth at a time: usually one MGET.
    live: list[str] = []
    for start in range(0, len(ids), s.feed_cap):
        live += _live(store, s, ids[start:start + s.feed_cap])
        if len(live) >= s.feed_cap:
            break
    live = live[:s.feed_cap]
    return int(LISTS(shard, [feed], ["rebuild", s.feed_cap, floor, store.tombstone_key(""),
                                    len(before), *before, *live]))


def rebuild_feeds(client: redis.Redis, s: Settings, progress: Progress = no_progress,
                  users: Sequence[int] = ()) -> Result:
    """The feed-rebuild batch job (on demand: `farm batch feed-rebuild USER_ID ...`): rebuild_feed
    for each user in turn. run_job has checked every id first, so a bad one means nothing is
    done."""
    del client, s  # feeds live on the shards, which feed_store knows; rebuild_feed reads settings
    uids = list(users)
    out = {"rebuilt": 0, "entries": 0}
    progress("users", 0, len(uids))
    for uid in uids:
        length = rebuild_feed(uid)
        log.info("feed-rebuild user=%d entries=%d", uid, length)
        out["rebuilt"] += 1
        out["entries"] += length
        progress("users", out["rebuilt"], len(uids))
    log.info("feed-rebuild %s", " ".join(f"{k}={v}" for k, v in out.items()))
    return out

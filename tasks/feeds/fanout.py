"""Feed fan-out: a photo's id into every follower's feed, active followers first.

An owner with FARM_CELEBRITY_FOLLOWERS followers or more is fanned out on read instead
(celebrities.py): ``fan_out`` records the post and stops there. Otherwise ``fan_out`` cuts the
owner's followers into chunks by follower id (not rank, so a follow or an
unfollow during a fan-out shifts nobody into another chunk) and enqueues each chunk twice: the
active followers' pass on ``feeds``, all of them first, then the rest on ``feeds_batch``.
``write_chunk`` is one Lua call on the data Redis (which followers, is the photo deleted) and,
per feed shard with followers in the chunk, one pipeline of write scripts of at most WRITE_SLICE
followers each: insert in sorted place, trim only when over the cap, and with the last slice set
the chunk's done-marker in the same atomic step, so a chunk run twice (redelivery, replay) writes
nothing the second time. When the feeds live on the data Redis itself, each slice selects and
writes in one script instead. Before any of that, the post goes into the
owner's posts list (for backfills and rebuilds) and their own feed; a tombstoned photo goes nowhere.

"Active" is judged against the photo's own time (from its id), not the clock when a chunk runs,
so both passes and any replay agree on who is in which pass.

Feed keys are built inside the shard script from a prefix rather than passed as KEYS: fine on
standalone servers (each shard is one), not valid under Redis Cluster. Key layout: store.py;
the scripts: fanout.lua.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from config.settings import Settings, get_settings
from tasks.core import prom, timing
from tasks.core.ids import id_time_ms
from tasks.core.process_local import ProcessLocal
from tasks.core.scripts import Script
from tasks.feeds import celebrities, ledger
from tasks.feeds.ledger import chunk_name
from tasks.feeds.store import FeedStore, feed_store

FANOUT = Script(__package__, "fanout.lua")  # entries: shard_write, select, local_slice, own_post
FOLLOWERS_GONE = Script(__package__, "followers_gone.lua")

# A touch recorded after the active pass looked may carry a clock a little behind the one that
# minted the photo id; anyone seen this close to (or after) the post is also in the inactive pass.
CLOCK_SKEW_S = 60.0

# Followers per write script. A chunk task covers FARM_FEED_CHUNK_SIZE followers (thousands:
# fewer, bigger tasks cost the farm less) but a script blocks its server while it runs, so each
# shard gets the chunk in slices of this many, pipelined: one round trip, and feed reads on the
# shard wait at most one slice (~2-3 ms).
WRITE_SLICE = 1000


def _write_feeds(store: FeedStore, s: Settings, photo_id: int, ids: str, chunk: str) -> int:
    """Write to every follower in ``ids`` (comma-joined): per shard with followers in it, the
    slices in one pipeline, the shards' pipelines in flight together. -1 if every shard had done
    this chunk already. Only the last slice sets a shard's marker: a rerun after a crash between
    slices redoes them, and place() never writes an id a feed already holds."""
    if not ids:
        return 0
    groups = store.split_by_shard(ids)
    keys = [store.marker_key(photo_id, chunk), store.tombstone_key(photo_id)]
    head = [photo_id, s.feed_cap, s.marker_ttl, f"{s.key_prefix}:feed:"]

    def write(item: tuple[int, list[str]]) -> list[int]:
        shard, uids = store.shards[item[0]], item[1]
        pipe = shard.pipeline(transaction=False)
        for start in range(0, len(uids), WRITE_SLICE):
            last = start + WRITE_SLICE >= len(uids)
            FANOUT(shard, keys, ["shard_write", *head, ",".join(uids[start:start + WRITE_SLICE]),
                                 int(last)], pipe=pipe)
        return [int(r) for r in pipe.execute()]

    # Each shard's scripts run on its own server: waiting on them one by one would add up.
    results = [write(g) for g in groups.items()] if len(groups) == 1 else list(
        _threads(len(store.shards)).map(write, groups.items()))
    flat = [r for shard in results for r in shard]
    if all(r == -1 for r in flat):
        return -1
    return sum(r for r in flat if r > 0)


_pools: ProcessLocal[int, ThreadPoolExecutor] = ProcessLocal("feed shard threads")


def _threads(n: int) -> ThreadPoolExecutor:
    """This process's threads for talking to the shards at once (made after fork)."""
    return _pools.get(n, lambda: ThreadPoolExecutor(n, thread_name_prefix="feed-shard"))


def chunk_ranges(store: FeedStore, owner_id: int, size: int) -> list[tuple[int, int]]:
    """The owner's followers as (lo, hi] follower-id ranges of about ``size`` each."""
    return store.follower_chunks(owner_id, size)[1]


def fan_out(photo_id: int, owner_id: int) -> dict[str, Any]:
    """Record the post, put it in the owner's own feed, and enqueue the followers' chunks."""
    s, store = get_settings(), feed_store()
    summary: dict[str, Any] = {"deleted": False, "followers": 0, "chunks": 0}
    with timing.phase("own"):
        if FANOUT(store.graph, [store.tombstone_key(photo_id), store.posts_key(owner_id)],
                  ["own_post", photo_id, s.posts_cap]) == -1:
            summary["deleted"] = True
            return summary
        _write_feeds(store, s, photo_id, str(owner_id), "own")
    with timing.phase("walk"):
        on_read, n = celebrities.is_celebrity_post(store, owner_id, photo_id)
        if on_read:  # merged into followers' feeds as they read them: nothing to write
            summary.update(followers=n, on_read=True)
            return summary
        n, chunks = store.follower_chunks(owner_id, s.feed_chunk_size)
    if not chunks:
        return summary
    with timing.phase("enqueue"):  # every active pass first, each listed in the ledger
        ledger.send(store, s, photo_id, owner_id,
                           [(lo, hi, active) for active in (True, False) for lo, hi in chunks])
    summary.update(followers=n, chunks=len(chunks))
    return summary


def write_chunk(photo_id: int, owner_id: int, lo: int, hi: int, active: bool) -> int:
    """Write one pass of one chunk; entries written, or -1 when it had run already."""
    s, store = get_settings(), feed_store()
    chunk = chunk_name(lo, hi, active)
    written = _write_chunk(store, s, photo_id, owner_id, lo, hi, active, chunk)
    ledger.done(store, photo_id, owner_id, chunk)
    prom.fanout_written(written)
    return written


def _write_chunk(store: FeedStore, s: Settings, photo_id: int, owner_id: int, lo: int, hi: int,
                 active: bool, chunk: str) -> int:
    # Both passes judge activity at the photo's own time, so a replay decides the same way; the
    # inactive pass also takes anyone seen since, who may have turned active after the active
    # pass looked (last_active only grows), so nobody falls between the two passes.
    posted = id_time_ms(photo_id) / 1000
    cutoff = posted - s.feed_active_days * 86400
    keys = [store.followers_key(owner_id), store.last_active, store.tombstone_key(photo_id)]
    args: list[Any] = [lo, hi, repr(cutoff), repr(posted - CLOCK_SKEW_S), int(active)]
    if len(store.shards) == 1 and store.shards[0] is store.graph:
        with timing.phase("write"):
            return _write_local(store, s, photo_id, keys, args, chunk)
    with timing.phase("select"):
        selected = FANOUT(store.graph, [*keys, store.unfollows_key(owner_id)],
                          ["select", *args])
    if selected == -1:
        return 0
    uids, unfollows = selected
    with timing.phase("write"):
        written = _write_feeds(store, s, photo_id, uids, chunk)
    if uids and (store.graph.get(store.unfollows_key(owner_id)) or "0") != unfollows:
        with timing.phase("recheck"):
            written -= _take_back(store, photo_id, owner_id, uids)
    return written


def _write_local(store: FeedStore, s: Settings, photo_id: int, keys: list[str],
                 args: list[Any], chunk: str) -> int:
    """The chunk on the data Redis, slice by slice (select and write in one script each);
    entries written, or -1 when it had run already."""
    keys = [*keys, store.marker_key(photo_id, chunk)]
    tail = [photo_id, s.feed_cap, s.marker_ttl, f"{s.key_prefix}:feed:", WRITE_SLICE]
    after = args[0]
    total: int = 0
    while True:
        written, last = FANOUT(store.graph, keys, ["local_slice", after, *args[1:], *tail])
        if written == -2:  # deleted
            return 0
        if written == -1:  # the chunk ran before (or another run just finished it)
            return total or -1
        total += written
        if not last:
            return total
        after = last


def _take_back(store: FeedStore, photo_id: int, owner_id: int, uids: str) -> int:
    """Out of the feeds of followers who unfollowed while the chunk ran (the owner's unfollow
    count moved): the web tier changes the graph before it enqueues user_unfollowed, so an
    unfollow whose removal ran between our select and our write shows here, and one that lands
    after this look is removed by its own task. Returns how many feeds gave the photo back."""
    gone = FOLLOWERS_GONE(store.graph, [store.followers_key(owner_id)], [uids])
    if not gone:
        return 0
    removed = 0
    for index, members in store.by_shard(map(int, gone.split(","))).items():
        pipe = store.shards[index].pipeline(transaction=False)
        for uid in members:
            pipe.lrem(store.feed_key(uid), 1, str(photo_id))
        removed += sum(pipe.execute())
    return removed

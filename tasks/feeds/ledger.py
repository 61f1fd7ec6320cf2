"""The fan-out ledger: which chunks of a post are still to run, so none is lost for good.

Why: kombu's Redis transport takes a message off its queue (BRPOP) before it records it as
unacked, so a worker SIGKILLed in between loses that message: no visibility timeout brings it
back (kombu #305). Everything else about delivery is at least once; for a post's fan-out that
window would leave some followers without the post forever.

So `feeds.fanout` sends its chunks through :func:`send`, which lists each in
``{p}:fanout_pending:{photo}`` (chunk name -> when it was sent) before sending it; each chunk
crosses itself off when it has run (in any outcome but a retry), and the `fanout-sweep` batch
job re-sends the chunks still listed FARM_FANOUT_SWEEP_AFTER seconds after they were sent. A
chunk that was only slow runs twice, which it is safe to do (its marker makes the second run a
no-op); the sweep re-sends a chunk at most once per FARM_FANOUT_SWEEP_AFTER.
``{p}:fanout_pending`` indexes the posts with chunks listed ("photo:owner" -> when to look
next), so the sweep never scans the keyspace.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import cast

import redis

from config.queues import Q
from config.settings import Settings
from tasks.core import publish
from tasks.core.jobs import Progress, Result, no_progress
from tasks.core.scripts import Script
from tasks.feeds.store import FeedStore, feed_store

log = logging.getLogger("farm.feeds")

LEDGER_DONE = Script(__package__, "ledger_done.lua")


def chunk_name(lo: int, hi: int, active: bool) -> str:
    return f"{lo}-{hi}-{'a' if active else 'i'}"


def parse_chunk(name: str) -> tuple[int, int, bool]:
    lo, hi, kind = name.split("-")
    return int(lo), int(hi), kind == "a"


Chunk = tuple[int, int, bool]  # (lo, hi, active)


def send(store: FeedStore, s: Settings, photo_id: int, owner_id: int,
         chunks: Sequence[Chunk]) -> None:
    """List the post's chunks in the ledger, then send them in the order given (listed first:
    a chunk may run at once)."""
    if not chunks:
        return
    now = time.time()
    key = store.pending_key(photo_id)
    pipe = store.graph.pipeline(transaction=False)
    pipe.hset(key, mapping={chunk_name(*chunk): repr(now) for chunk in chunks})
    pipe.expire(key, s.marker_ttl)
    pipe.zadd(store.pending_index, {f"{photo_id}:{owner_id}": now + s.fanout_sweep_after})
    pipe.execute()
    _publish(photo_id, owner_id, chunks)


def done(store: FeedStore, photo_id: int, owner_id: int, chunk: str) -> None:
    LEDGER_DONE(store.graph, [store.pending_key(photo_id), store.pending_index],
                [chunk, f"{photo_id}:{owner_id}"])


def resend_stale(client: redis.Redis, s: Settings, progress: Progress = no_progress) -> Result:
    """The `fanout-sweep` job: re-send every listed chunk sent FARM_FANOUT_SWEEP_AFTER ago."""
    del client  # the ledger lives with the graph, which feed_store knows
    store = feed_store(s)
    now = time.time()
    due = cast("list[str]", store.graph.zrangebyscore(store.pending_index, "-inf", now))
    out = {"posts": 0, "resent": 0, "finished": 0}
    for n, member in enumerate(due, 1):
        photo, owner = (int(x) for x in member.split(":"))
        listed = cast("dict[str, str]", store.graph.hgetall(store.pending_key(photo)))
        if not listed:  # every chunk ran (or the ledger expired) since the index was written
            store.graph.zrem(store.pending_index, member)
            out["finished"] += 1
            continue
        stale = [name for name, sent in listed.items() if float(sent) <= now - s.fanout_sweep_after]
        if stale:
            store.graph.hset(store.pending_key(photo), mapping=dict.fromkeys(stale, repr(now)))
            _publish(photo, owner, [parse_chunk(name) for name in stale])
            out["resent"] += len(stale)
        oldest = min(now if name in stale else float(sent) for name, sent in listed.items())
        store.graph.zadd(store.pending_index, {member: oldest + s.fanout_sweep_after})
        out["posts"] += 1
        progress("posts", n, len(due))
    progress("posts", len(due), len(due))
    if out["resent"]:
        log.warning("fanout-sweep re-sent %d chunk(s) of %d post(s) still listed after %ss",
                    out["resent"], out["posts"], s.fanout_sweep_after)
    return out


def _publish(photo_id: int, owner_id: int, chunks: Sequence[Chunk]) -> None:
    with publish.batch() as producer:
        for lo, hi, active in chunks:
            queue = Q.FEEDS if active else Q.FEEDS_BATCH
            publish.send("feeds.fanout_chunk", {
                "photo_id": photo_id, "owner_id": owner_id, "lo": lo, "hi": hi,
                "active": active}, queue=queue, producer=producer)

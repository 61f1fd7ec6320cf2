"""The feed data contract with the web tier, in one place: key layout, sharding, reads.

In the data Redis (the graph, written by the web tier; `follow`/`unfollow`/`touch` below do it
right):
  {p}:followers:{uid}   sorted set of the user's followers, member = score = follower id
                        (scores make a stable cursor for fan-out: ids, not ranks)
  {p}:following:{uid}   sorted set of the users they follow, member = score = followee id
  {p}:last_active       sorted set, member = user id, score = last-active Unix time
  {p}:posts:{uid}       list of the user's own photo ids, newest first (capped), kept by fan-out
  {p}:celebrities, {p}:celebrities:read   owners fanned out on read (tasks/feeds/celebrities.py)
On the feed shards (a user's keys always on one shard, by a stable hash of the user id):
  {p}:feed:{uid}        list of photo ids, newest first, capped at FARM_FEED_CAP
  {p}:activity:{uid}    list of JSON activity entries, newest first, capped
  {p}:fanout:{photo}:{chunk}   a fan-out chunk's done-marker, written with the feed writes

Photo ids are 64-bit and time-sorted (tasks/core/ids.py). Redis scores are doubles, exact to
2**53: user ids, which are scores here, must stay below that (tasks/core/validation.py holds
both limits); photo ids are only ever list members.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from itertools import pairwise
from typing import Any, TypeVar, cast

import numpy as np
import numpy.typing as npt
import redis
from redis.exceptions import NoScriptError

from config.settings import Settings, get_settings
from tasks.core.process_local import ProcessLocal
from tasks.core.redis import data_redis, redis_client
from tasks.core.scripts import Script
from tasks.core.validation import MAX_USER_ID
from tasks.feeds import celebrities
from tasks.feeds.sharding import jump_hash, jump_hash_many

FOLLOWER_BOUNDS = Script(__package__, "follower_bounds.lua")

T = TypeVar("T")


class FeedStore:
    """Keys, shard clients and the web tier's reads. One per process (see :func:`feed_store`)."""

    def __init__(self, s: Settings, graph: redis.Redis, shards: list[redis.Redis]) -> None:
        self.s = s
        self.graph = graph
        self.shards = shards
        p = s.key_prefix
        self.last_active = f"{p}:last_active"
        self.celebrities = f"{p}:celebrities"  # tasks/feeds/celebrities.lua
        self.celebrities_read = f"{p}:celebrities:read"
        self._p = p

    # keys
    def followers_key(self, uid: int) -> str:
        return f"{self._p}:followers:{uid}"

    def following_key(self, uid: int) -> str:
        return f"{self._p}:following:{uid}"

    def pending_key(self, photo_id: int) -> str:
        """The post's fan-out chunks not yet run (tasks/feeds/ledger.py)."""
        return f"{self._p}:fanout_pending:{photo_id}"

    @property
    def pending_index(self) -> str:
        return f"{self._p}:fanout_pending"

    def unfollows_key(self, uid: int) -> str:
        """A count of the unfollows the user has had: a fan-out chunk compares it before and
        after its write, and looks for followers who left only when it moved."""
        return f"{self._p}:unfollows:{uid}"

    def posts_key(self, uid: int) -> str:
        return f"{self._p}:posts:{uid}"

    def feed_key(self, uid: int) -> str:
        return f"{self._p}:feed:{uid}"

    def activity_key(self, uid: int) -> str:
        return f"{self._p}:activity:{uid}"

    def tombstone_key(self, photo_id: int | str) -> str:
        """A deleted photo's tombstone, on the data Redis and every shard ("" gives the prefix,
        for scripts that check many ids)."""
        return f"{self._p}:deleted:{photo_id}"

    def marker_key(self, photo_id: int, chunk: str) -> str:
        return f"{self._p}:fanout:{photo_id}:{chunk}"

    # sharding
    def shard_index(self, uid: int) -> int:
        return jump_hash(uid, len(self.shards))

    def shard_for(self, uid: int) -> redis.Redis:
        return self.shards[self.shard_index(uid)]

    def follower_chunks(self, owner_id: int, size: int) -> tuple[int, list[tuple[int, int]]]:
        """The follower count, and the followers as (lo, hi] follower-id ranges of about
        ``size`` each: ids, not ranks, so a follow or unfollow mid-walk shifts nobody into
        another chunk; the last range is open-ended, for follows that land during the walk."""
        n, *bounds = FOLLOWER_BOUNDS(self.graph, [self.followers_key(owner_id)], [size])
        if not n:
            return 0, []
        return int(n), list(pairwise([0, *map(int, bounds), MAX_USER_ID]))

    def by_shard(self, uids: Iterable[int]) -> dict[int, list[int]]:
        """Shard index -> the given users on it, in the order given."""
        users = list(uids)
        return self._grouped(users, lambda: np.array(users, dtype=np.uint64))

    def split_by_shard(self, ids: str) -> dict[int, list[str]]:
        """Shard index -> the users of ``ids`` (comma-joined decimal ids, as the select script
        gives them) on it, in the order given: parsed and hashed for the whole chunk at once."""
        parts = ids.split(",") if ids else []
        return self._grouped(parts, lambda: np.fromstring(ids, dtype=np.uint64, sep=","))

    def _grouped(self, items: list[T], keys: Callable[[], npt.NDArray[np.uint64]]
                 ) -> dict[int, list[T]]:
        """Shard index -> ``items`` on it, in their order; ``keys()`` gives their user ids
        (needed only with several shards)."""
        if len(self.shards) == 1 or not items:
            return {0: items} if items else {}
        shard = jump_hash_many(keys(), len(self.shards))
        return {int(i): [items[j] for j in np.flatnonzero(shard == i).tolist()]
                for i in np.unique(shard)}

    # the web tier's reads
    def feed_page(self, uid: int, limit: int = 30, before_id: int | None = None) -> list[int]:
        """Up to ``limit`` photo ids of the user's feed, newest first, older than ``before_id``:
        the feed list on its shard, with the posts of the celebrities the user follows merged
        in by id (tasks/feeds/celebrities.py), no id twice. A full feed (FARM_FEED_CAP) shows
        nothing older than its oldest entry, as if those posts had been fanned out and trimmed."""
        if limit <= 0:
            return []
        shard, key = self.shard_for(uid), self.feed_key(uid)
        before = "" if before_id is None else str(before_id)
        together = shard is self.graph  # one server: the merge rides in the same round trip

        def read() -> list[Any]:
            pipe = shard.pipeline(transaction=False)
            if before_id is None:
                pipe.lrange(key, 0, limit - 1)
            else:
                pipe.lpos(key, before)  # no COUNT: one position
            if together:
                celebrities.merged_posts(self, uid, limit, before, pipe=pipe)
            return list(pipe.execute())

        try:
            got = read()
        except NoScriptError:  # the server restarted without its scripts: load, read again
            celebrities.load_scripts(self)
            got = read()
        merged = got[1] if together else celebrities.merged_posts(self, uid, limit, before)
        if before_id is None:
            own = [int(x) for x in got[0]]
        elif got[0] is not None:
            pos = int(got[0])
            own = [int(x) for x in shard.lrange(key, pos + 1, pos + limit)]
        else:  # the cursor's photo is not in the list (deleted, trimmed, a celebrity's post):
            # the list is sorted, so filter it
            own = [int(x) for x in shard.lrange(key, 0, -1) if int(x) < before_id][:limit]
        if not merged:
            return own
        extra = [int(x) for x in merged]
        if len(own) < limit:  # at the feed's end: a full feed's trimmed past starts here
            floor = self._full_feed_floor(shard, key)
            extra = [x for x in extra if x >= floor]
        return sorted(set(extra).union(own), reverse=True)[:limit]

    def _full_feed_floor(self, shard: redis.Redis, key: str) -> int:
        """The oldest id a full feed holds (older ones would have been trimmed), else 0."""
        pipe = shard.pipeline(transaction=False)
        pipe.llen(key)
        pipe.lindex(key, -1)
        length, oldest = pipe.execute()
        cap = get_settings().feed_cap  # as the writes read it, not the store's first settings
        return int(oldest) if int(length) >= cap and oldest is not None else 0

    def activity_page(self, uid: int, limit: int = 30) -> list[str]:
        entries = self.shard_for(uid).lrange(self.activity_key(uid), 0, limit - 1)
        return list(cast("list[str]", entries))

    # the web tier's graph writes, done the way fan-out expects them
    def follow(self, follower: int, followee: int) -> None:
        pipe = self.graph.pipeline(transaction=True)
        pipe.zadd(self.followers_key(followee), {str(follower): follower})
        pipe.zadd(self.following_key(follower), {str(followee): followee})
        pipe.execute()

    def unfollow(self, follower: int, followee: int) -> None:
        pipe = self.graph.pipeline(transaction=True)
        pipe.zrem(self.followers_key(followee), str(follower))
        pipe.zrem(self.following_key(follower), str(followee))
        pipe.incr(self.unfollows_key(followee))
        pipe.execute()

    def touch(self, uid: int, when: float | None = None) -> None:
        """Record that the user was active (opened the app) now, or at ``when``."""
        self.graph.zadd(self.last_active, {str(uid): time.time() if when is None else when})


_stores: ProcessLocal[tuple[tuple[str, ...], str], FeedStore] = ProcessLocal("feed stores")


def feed_store(s: Settings | None = None) -> FeedStore:
    """The process's FeedStore; shard clients are made after fork, one pool per shard."""
    s = s or get_settings()
    settings = s

    def make() -> FeedStore:
        graph = data_redis(settings.redis_url)
        shards = [redis_client(u) for u in settings.feed_shards] or [graph]
        return FeedStore(settings, graph, shards)

    return _stores.get((s.feed_shards, s.redis_url), make)

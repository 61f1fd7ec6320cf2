"""The feed data contract: time-sorted ids, stable sharding, the web tier's reads and writes."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from tasks.core.ids import EPOCH_MS, IdGenerator, id_shard, id_time_ms, make_id
from tasks.feeds.sharding import jump_hash
from tasks.feeds.store import feed_store


def test_ids_sort_by_time_and_carry_their_shard() -> None:
    gen = IdGenerator(shard=42)
    ids = [gen.next_id() for _ in range(5000)]  # several milliseconds' worth, sequence wraps
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(id_shard(i) == 42 for i in ids)
    assert abs(id_time_ms(ids[-1]) - time.time() * 1000) < 1000
    assert ids[-1] < 2**63
    assert make_id(EPOCH_MS + 1, 0, 0) > make_id(EPOCH_MS, 8191, 1023)  # time outranks the rest
    with pytest.raises(ValueError):
        IdGenerator(shard=8192)


def test_ids_are_unique_across_threads() -> None:
    gen, out = IdGenerator(shard=1), []

    def take() -> None:
        out.extend(gen.next_id() for _ in range(2000))

    threads = [threading.Thread(target=take) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(out)) == 8000


def test_jump_hash_is_stable_balanced_and_moves_little_on_growth() -> None:
    users = range(1, 60_001)
    three = [jump_hash(u, 3) for u in users]
    assert three == [jump_hash(u, 3) for u in users]  # deterministic
    counts = [three.count(b) for b in range(3)]
    assert max(counts) - min(counts) < 0.03 * len(users)
    moved = [u for u, b in zip(users, three, strict=True) if jump_hash(u, 4) != b]
    assert 0.22 < len(moved) / len(users) < 0.28  # about 1/4 move ...
    assert all(jump_hash(u, 4) == 3 for u in moved)  # ... and only to the new shard
    assert jump_hash(7, 1) == 0


def test_feed_page_reads_newest_first_with_a_cursor(data: redis.Redis,
                                                    sharded: dict[str, str]) -> None:
    store = feed_store()
    assert len(store.shards) == 3
    ids = [make_id(EPOCH_MS + 10_000 + i, 0, 0) for i in range(10)]  # oldest first
    shard = store.shard_for(77)
    shard.lpush(store.feed_key(77), *ids)  # newest at the head
    newest = ids[::-1]
    assert store.feed_page(77, 3) == newest[:3]
    assert store.feed_page(77, 3, before_id=newest[2]) == newest[3:6]
    # A cursor whose photo has gone (deleted): the next older ones all the same.
    shard.lrem(store.feed_key(77), 0, newest[5])
    assert store.feed_page(77, 2, before_id=newest[5]) == newest[6:8]
    assert store.feed_page(77, 0) == [] and store.feed_page(78, 5) == []
    others = [s for s in store.shards if s is not shard]
    assert not any(o.exists(store.feed_key(77)) for o in others)


def test_graph_writes_keep_both_directions(data: redis.Redis) -> None:
    store = feed_store()
    store.follow(5, 9)
    store.follow(6, 9)
    store.touch(5, when=1000.0)
    assert data.zrange(store.followers_key(9), 0, -1, withscores=True) == [("5", 5.0),
                                                                          ("6", 6.0)]
    assert data.zrange(store.following_key(5), 0, -1) == ["9"]
    assert data.zscore(store.last_active, "5") == 1000.0
    store.unfollow(5, 9)
    assert data.zrange(store.followers_key(9), 0, -1) == ["6"]
    assert data.zcard(store.following_key(5)) == 0


def test_rebalance_moves_feeds_to_their_new_shard_after_one_is_added(
        data: redis.Redis, sharded: dict[str, str]) -> None:
    from tasks.feeds.rebalance import rebalance
    from tasks.feeds.store import FeedStore

    full = feed_store()
    before = FeedStore(full.s, full.graph, full.shards[:2])  # the farm as it was: two shards
    users = range(1, 301)
    for uid in users:
        shard = before.shard_for(uid)
        shard.rpush(before.feed_key(uid), *(make_id(EPOCH_MS + 5000 - i, 0, uid) for i in
                                            range(3)))
        shard.lpush(before.activity_key(uid), f'{{"kind": "like", "n": {uid}}}')
    moving = [u for u in users if full.shard_index(u) != before.shard_index(u)]
    assert moving and all(full.shard_index(u) == 2 for u in moving)
    # After the switch, a post already landed on a moved user's new shard.
    newest = make_id(EPOCH_MS + 9000, 0, 0)
    full.shard_for(moving[0]).lpush(full.feed_key(moving[0]), newest)

    moved = rebalance(full)
    assert moved == 2 * len(moving)
    for uid in users:
        expected = [make_id(EPOCH_MS + 5000 - i, 0, uid) for i in range(3)]
        if uid == moving[0]:
            expected = [newest, *expected]
        assert full.feed_page(uid, 10) == expected
        assert full.activity_page(uid) == [f'{{"kind": "like", "n": {uid}}}']
        for index, shard in enumerate(full.shards):
            if index != full.shard_index(uid):
                assert not shard.exists(full.feed_key(uid), full.activity_key(uid))
    assert rebalance(full) == 0  # nothing left to move

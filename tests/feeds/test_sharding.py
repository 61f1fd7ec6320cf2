"""The chunk-at-once shard hash agrees with the one-user definition, bit for bit, and a chunk is
split by shard in its own order."""

from __future__ import annotations

import random

import numpy as np
import redis

from tasks.feeds.sharding import jump_hash, jump_hash_many
from tasks.feeds.store import feed_store


def test_the_vectorised_hash_is_the_scalar_one_for_any_key_and_shard_count() -> None:
    rng = random.Random(12)
    keys = [0, 1, 2**53 - 1, 2**63, 2**64 - 1, *range(1, 2000),
            *(rng.getrandbits(64) for _ in range(20_000))]
    for buckets in (1, 2, 3, 4, 5, 7, 8, 16, 31, 64, 100, 1000, 65_536):
        many = jump_hash_many(keys, buckets).tolist()
        assert many == [jump_hash(k, buckets) for k in keys], buckets
    assert jump_hash_many([], 4).tolist() == []


def test_a_chunk_is_split_by_shard_in_its_own_order(data: redis.Redis,
                                                    sharded: dict[str, str]) -> None:
    store = feed_store()
    users = random.Random(3).sample(range(1, 2**53), 5000)
    ids = ",".join(map(str, users))
    split = store.split_by_shard(ids)
    assert sorted(split) == [0, 1, 2]
    for index, members in split.items():
        assert all(store.shard_index(int(u)) == index for u in members)
        assert members == [str(u) for u in users if store.shard_index(u) == index]  # order kept
    assert store.by_shard(users) == {i: list(map(int, m)) for i, m in split.items()}
    assert store.split_by_shard("") == {} and store.by_shard([]) == {}
    assert sum(len(m) for m in split.values()) == len(users)
    assert np.unique([store.shard_index(u) for u in users]).tolist() == [0, 1, 2]

"""A feed shard that stops answering mid fan-out (its server frozen with SIGSTOP: the TCP
connections stay up, nothing comes back, as with a hung machine) costs chunks a socket timeout
(redis-py's default, 5 s, which the data clients keep) and a retry each, never a hang; once it
answers again every follower has every post once, in order, though the frozen server ran the
writes it had taken when it woke. Real feed workers, real servers (tests/hosts has a shard's
cable pulled)."""

from __future__ import annotations

import os
import signal
import time

import pytest
import redis

from config.celery_app import app
from tasks.feeds.store import feed_store
from tests.feeds.test_fanout import add_followers, photo
from tests.support.workers import WorkerFactory, wait_for
from workers.embedded_redis import EmbeddedRedis

pytestmark = pytest.mark.integration


def test_a_frozen_feed_shard_costs_retries_not_a_hang_and_loses_nothing(
        shard_servers: list[EmbeddedRedis], sharded: dict[str, str], data: redis.Redis,
        workers: WorkerFactory) -> None:
    owner, posts, followers = 1, 8, list(range(1000, 4000))
    store = feed_store()
    add_followers(store, owner, followers)
    feed = workers("feed", concurrency=2, queues=["feeds", "feeds_batch"],
                   env={**sharded, "FARM_FEED_CHUNK_SIZE": "100"})
    for n in range(1, posts + 1):
        app.send_task("feeds.fanout", kwargs={"photo_id": photo(n), "owner_id": owner})
    wait_for(lambda: feed.log().count("task=feeds.fanout_chunk id=") >= 20, timeout=60,
             what="the fan-out under way")
    frozen = shard_servers[0].proc
    assert frozen is not None
    os.kill(frozen.pid, signal.SIGSTOP)
    try:
        frozen_at = time.monotonic()
        # Without a socket timeout the chunks on it would wait until it is let go, and no
        # retry would show while it is frozen.
        wait_for(lambda: feed.log().count("status=retry") >= 2, timeout=60,
                 what="chunks giving up on the frozen shard and retrying")
        waited = time.monotonic() - frozen_at
    finally:
        os.kill(frozen.pid, signal.SIGCONT)
    thawed_at = time.monotonic()
    expected = [photo(n) for n in range(posts, 0, -1)]
    wait_for(lambda: all(len(store.feed_page(u, limit=posts + 1)) == posts for u in followers),
             timeout=120, interval=0.5, what="every follower's every post")
    took = time.monotonic() - thawed_at
    wait_for(lambda: not data.keys("farm:fanout_pending:*"), timeout=60,
             what="the fan-out ledger to empty")
    assert all(store.feed_page(u, limit=posts + 1) == expected for u in followers)
    assert not data.keys("farm:deadletter*"), "a chunk was dead-lettered"
    print(f"feed shard frozen mid fan-out: first retries {waited:.1f} s after the freeze, "
          f"{feed.log().count('status=retry')} chunk retries, complete {took:.1f} s after it "
          "answered again")

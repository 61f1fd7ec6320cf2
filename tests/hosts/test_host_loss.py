"""Several hosts: worker nodes in network namespaces of their own reach the one broker, the data
Redis and the feed shards over their own links; one host is cut off mid-load, and the work it
held is redelivered to the other with nothing lost; back on its link, that host works again.

Skips, saying why, where namespaces cannot be made (not root, no iproute2).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

from config.celery_app import app
from tests.conftest import BROKER_DB, DATA_DB
from tests.support import netns
from tests.support.workers import FAST_REDELIVERY, WorkerFactory, wait_for
from workers.embedded_redis import EmbeddedRedis
from workers.launcher import WorkerProcess

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif((why := netns.can_make_namespaces()) is not None,
                                 reason=f"no network namespaces here: {why}")]

ENV = {**FAST_REDELIVERY, "FARM_INFLIGHT_HEARTBEAT": "5"}
Hosts = list[tuple[netns.Host, WorkerProcess]]


@contextmanager
def two_hosts(servers: list[EmbeddedRedis], profile: str, tmp_path: Path,
              env: Callable[[netns.Host], dict[str, str]],
              queues: list[str] | None = None) -> Iterator[Hosts]:
    """A ``profile`` worker node on each of two hosts, ready; killed and removed after."""
    started: Hosts = []
    with netns.hosts(2, [s.port or 0 for s in servers]) as made:
        try:
            for host in made:
                w = WorkerProcess(profile, tmp_path / f"{host.ns}.log",
                                  {**os.environ, **ENV, **env(host)}, concurrency=2,
                                  node=host.ns, queues=queues)
                w.argv = host.wrap(w.argv)
                started.append((host, w.start()))
            for _, w in started:
                w.wait_ready(60)
            yield started
        finally:
            for _, w in started:
                w.kill()


def redis_env(server: EmbeddedRedis) -> Callable[[netns.Host], dict[str, str]]:
    pw, port = server.password, server.port or 0
    return lambda h: {"FARM_BROKER_URL": h.redis_url(pw, port, BROKER_DB),
                      "FARM_REDIS_URL": h.redis_url(pw, port, DATA_DB)}


def test_a_host_cut_off_mid_load_loses_nothing_and_works_again_once_back(
        redis_server: EmbeddedRedis, data: redis.Redis, tmp_path: Path) -> None:
    """Then the cable goes back in, the other host stops, and the returning host (the same
    worker processes, never restarted) runs new work: its pool's result pipe, its prefetch
    slots and its event loop all came through the outage (workers/pool_results.py,
    workers/heartbeat.py, config/reliable_redis.py's ack)."""
    tasks = 40  # diag.sleep(0.4) each: several seconds of work for the two hosts
    with two_hosts([redis_server], "batch", tmp_path, redis_env(redis_server)) as hosts:
        (doomed_host, doomed), (_, survivor) = hosts
        for i in range(tasks):
            app.send_task("diag.sleep", args=[0.4, f"h{i}"])
        # The fault at a chosen point: the doomed host has finished two tasks, so it holds more
        # (running and prefetched) and the queue is far from drained.
        wait_for(lambda: doomed.log().count("task=diag.sleep id=") >= 2, timeout=60,
                 what="the doomed host at work")
        doomed_host.cut()
        cut_at = time.monotonic()
        wait_for(lambda: all(data.llen(f"farm:diag:h{i}") for i in range(tasks)), timeout=90,
                 what="every task to finish somewhere")
        took = time.monotonic() - cut_at
        runs = [int(data.llen(f"farm:diag:h{i}")) for i in range(tasks)]
        # Cut off, the worker's event loop still turns (no call waits on the dead link for
        # good): its 10 s sweep of set-aside messages runs, and says it cannot reach Redis.
        wait_for(lambda: "set-aside messages not moved yet" in doomed.log(), timeout=90,
                 what="the cut-off worker's event loop to turn")
        doomed_host.restore()
        back_at = time.monotonic()
        survivor.kill()
        for i in range(5):
            app.send_task("diag.sleep", args=[0.1, f"back{i}"])
        wait_for(lambda: all(data.llen(f"farm:diag:back{i}") for i in range(5)), timeout=120,
                 what="the host back on its link to run new work")
        back = time.monotonic() - back_at
        assert doomed.alive(), "the returning host's worker died instead of taking work again"
    restored = len(data.keys("farm:deliveries:*"))  # counted only for restored messages
    assert restored >= 1, "the cut host held nothing that came back"
    print(f"host cut off mid-load: {tasks} tasks all done {took:.1f} s after the cut, "
          f"{restored} redelivered from the lost host, {sum(r > 1 for r in runs)} ran twice; "
          f"back on its link, the host ran new work {back:.1f} s later")


def test_fan_out_over_feed_shards_survives_a_host_cut_off(
        redis_server: EmbeddedRedis, shard_servers: list[EmbeddedRedis],
        sharded: dict[str, str], data: redis.Redis, tmp_path: Path) -> None:
    """Both hosts write feeds on three shards (two servers of their own and a database of the
    session's) through their links; the doomed one is cut mid fan-out. Every follower ends with
    every post once, in order, and every chunk is crossed off the fan-out ledger."""
    from tasks.feeds.store import feed_store
    from tests.feeds.test_fanout import add_followers, photo

    owner, posts, followers = 1, 12, list(range(1000, 5000))
    store = feed_store()
    add_followers(store, owner, followers)
    shards = [(s, 0) for s in shard_servers] + [(redis_server, 2)]  # as `sharded` lists them

    def env(h: netns.Host) -> dict[str, str]:
        urls = [h.redis_url(s.password, s.port or 0, db) for s, db in shards]
        return {**redis_env(redis_server)(h), "FARM_FEED_SHARDS": ",".join(urls),
                "FARM_FEED_CHUNK_SIZE": "100"}

    with two_hosts([redis_server, *shard_servers], "feed", tmp_path, env,
                   queues=["feeds", "feeds_batch"]) as hosts:
        (doomed_host, doomed), _ = hosts
        for n in range(1, posts + 1):
            app.send_task("feeds.fanout", kwargs={"photo_id": photo(n), "owner_id": owner})
        wait_for(lambda: doomed.log().count("task=feeds.fanout_chunk id=") >= 40, timeout=60,
                 what="the doomed host mid fan-out")
        doomed_host.cut()
        cut_at = time.monotonic()
        expected = [photo(n) for n in range(posts, 0, -1)]

        def complete() -> bool:
            return all(len(store.feed_page(u, limit=posts + 1)) == posts for u in followers)

        wait_for(complete, timeout=90, interval=0.5, what="every follower's every post")
        took = time.monotonic() - cut_at
        wait_for(lambda: not data.keys("farm:fanout_pending:*"), timeout=30,
                 what="the fan-out ledger to empty")
    assert all(store.feed_page(u, limit=posts + 1) == expected for u in followers)
    print(f"host cut off mid fan-out: {posts} posts x {len(followers)} followers on 3 shards, "
          f"complete {took:.1f} s after the cut, "
          f"{len(data.keys('farm:deliveries:*'))} chunks restored by the visibility timeout")



def test_a_feed_shard_on_a_host_cut_off_mid_fan_out_loses_nothing_once_back(
        redis_server: EmbeddedRedis, data: redis.Redis, workers: WorkerFactory,
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A feed shard on a host of its own (its server inside a namespace), the workers here: its
    cable pulled mid fan-out for a while, then put back. Chunks bound for it fail (the kernel
    gives up on the unreachable host within seconds) and retry; once it is back every follower
    has every post once, in order, the ledger empties, and nothing is dead-lettered."""
    from config.settings import get_settings
    from tasks.feeds.store import feed_store
    from tests.feeds.test_fanout import add_followers, photo

    owner, posts, followers = 1, 8, list(range(1000, 4000))
    with netns.hosts(1, []) as (shard_host,):
        shard = EmbeddedRedis(port=6380, address=shard_host.address,
                              launcher=shard_host.wrap([])).start()
        try:
            redis.Redis.from_url(redis_server.url(2)).flushdb()
            shards = ",".join([shard.url(0), redis_server.url(2)])
            monkeypatch.setenv("FARM_FEED_SHARDS", shards)
            get_settings.cache_clear()
            store = feed_store()
            add_followers(store, owner, followers)
            feed = workers("feed", concurrency=2, queues=["feeds", "feeds_batch"],
                           env={"FARM_FEED_SHARDS": shards, "FARM_FEED_CHUNK_SIZE": "100"})
            for n in range(1, posts + 1):
                app.send_task("feeds.fanout", kwargs={"photo_id": photo(n), "owner_id": owner})
            wait_for(lambda: feed.log().count("task=feeds.fanout_chunk id=") >= 20, timeout=60,
                     what="the fan-out under way")
            shard_host.cut()
            # Down long enough for chunks to fail against it and be retried (not a sleep: the
            # workers say so), then back.
            wait_for(lambda: feed.log().count("status=retry") >= 2, timeout=90,
                     what="chunks failing against the cut-off shard and retrying")
            shard_host.restore()
            back_at = time.monotonic()
            expected = [photo(n) for n in range(posts, 0, -1)]
            wait_for(lambda: all(len(store.feed_page(u, limit=posts + 1)) == posts
                                 for u in followers), timeout=120, interval=0.5,
                     what="every follower's every post")
            took = time.monotonic() - back_at
            wait_for(lambda: not data.keys("farm:fanout_pending:*"), timeout=60,
                     what="the fan-out ledger to empty")
            assert all(store.feed_page(u, limit=posts + 1) == expected for u in followers)
            assert not data.keys("farm:deadletter*"), "a chunk was dead-lettered"
            retries = feed.log().count("status=retry")
        finally:
            shard.stop()
            get_settings.cache_clear()
    print(f"feed shard host cut off mid fan-out: {posts} posts x {len(followers)} followers, "
          f"{retries} chunk retries, complete {took:.1f} s after the cable was back")

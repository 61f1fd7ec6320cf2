"""Several hosts: worker nodes in network namespaces of their own reach the one broker (and the
data Redis) over their own links; one host is cut off mid-load, and the work it held is
redelivered to the other with nothing lost.

Skips, saying why, where namespaces cannot be made (not root, no iproute2).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import redis

from config.celery_app import app
from tests.conftest import BROKER_DB, DATA_DB
from tests.support import netns
from tests.support.workers import FAST_REDELIVERY, wait_for
from workers.embedded_redis import EmbeddedRedis
from workers.launcher import WorkerProcess

pytestmark = pytest.mark.integration

TASKS = 40  # diag.sleep(0.4) each: several seconds of work for the two hosts
WHY_NOT = netns.can_make_namespaces()


@pytest.mark.skipif(WHY_NOT is not None, reason=f"no network namespaces here: {WHY_NOT}")
def test_a_host_cut_off_mid_load_loses_nothing(redis_server: EmbeddedRedis,
                                               data: redis.Redis, tmp_path: Path) -> None:
    env = {**FAST_REDELIVERY, "FARM_INFLIGHT_HEARTBEAT": "5"}
    workers: list[WorkerProcess] = []
    with netns.hosts(2, redis_server.port or 0) as (doomed, survivor):
        try:
            for host in (doomed, survivor):
                w = WorkerProcess("batch", tmp_path / f"{host.ns}.log", {
                    **os.environ, **env,
                    "FARM_BROKER_URL": host.redis_url(redis_server.password, BROKER_DB),
                    "FARM_REDIS_URL": host.redis_url(redis_server.password, DATA_DB),
                }, concurrency=2, node=host.ns)
                w.argv = host.wrap(w.argv)
                workers.append(w.start())
            for w in workers:
                w.wait_ready(60)
            for i in range(TASKS):
                app.send_task("diag.sleep", args=[0.4, f"h{i}"])

            def done_by(w: WorkerProcess) -> int:
                return w.log().count("task=diag.sleep id=")

            # The fault at a chosen point: the doomed host has finished two tasks, so it holds
            # more (running and prefetched) and the queue is far from drained.
            wait_for(lambda: done_by(workers[0]) >= 2, timeout=60, what="the doomed host at work")
            doomed.cut()
            cut_at = time.monotonic()
            finished = wait_for(
                lambda: all(data.llen(f"farm:diag:h{i}") for i in range(TASKS)),
                timeout=90, what="every task to finish somewhere")
            took = time.monotonic() - cut_at
        finally:
            for w in workers:
                w.kill()
    assert finished
    runs = [int(data.llen(f"farm:diag:h{i}")) for i in range(TASKS)]
    restored = len(data.keys("farm:deliveries:*"))  # counted only for restored messages
    assert restored >= 1, "the cut host held nothing that came back"
    print(f"host cut off mid-load: {TASKS} tasks all done {took:.1f} s after the cut, "
          f"{restored} redelivered from the lost host, {sum(r > 1 for r in runs)} ran twice")

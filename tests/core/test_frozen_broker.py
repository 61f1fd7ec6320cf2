"""A broker that stops answering (its server frozen with SIGSTOP: connections stay up and
nothing comes back, as with a hung machine or a link that drops packets without a word) does
not freeze a worker: its event loop goes on turning (config/celery_app.py's broker socket
timeout, workers/heartbeat.py), and once the broker answers again the worker, never restarted,
runs what was queued and what comes after, nothing lost. A broker of the test's own, so the
session's goes on answering."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest
import redis

from config.celery_app import app
from tests.support.workers import WorkerFactory, wait_for
from workers.embedded_redis import EmbeddedRedis

pytestmark = [pytest.mark.integration, pytest.mark.redis_broker]


@pytest.fixture
def broker() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis() as server:
        yield server


def send(broker: EmbeddedRedis, markers: list[str], seconds: float) -> None:
    with app.connection_for_write(url=broker.url(0)) as conn:
        for marker in markers:
            app.send_task("diag.sleep", args=[seconds, marker], connection=conn)


def test_a_frozen_broker_freezes_no_worker_and_loses_nothing(
        broker: EmbeddedRedis, data: redis.Redis, workers: WorkerFactory) -> None:
    worker = workers("batch", concurrency=2, env={"FARM_BROKER_URL": broker.url(0)})
    before = [f"fb{i}" for i in range(20)]
    send(broker, before, 0.2)
    wait_for(lambda: sum(bool(data.llen(f"farm:diag:{m}")) for m in before) >= 4, timeout=60,
             what="the worker at work")
    assert broker.proc is not None
    os.kill(broker.proc.pid, signal.SIGSTOP)
    try:
        frozen_at = time.monotonic()
        seen = worker.log().count("set-aside messages not moved yet")
        # The parent's 10 s sweep runs (and says it cannot reach the broker): the event loop
        # turns. Without a deadline on broker calls it would wait on the frozen server.
        wait_for(lambda: worker.log().count("set-aside messages not moved yet") > seen,
                 timeout=90, what="the worker's event loop to turn while the broker is frozen")
        turned = time.monotonic() - frozen_at
    finally:
        os.kill(broker.proc.pid, signal.SIGCONT)
    thawed_at = time.monotonic()
    after = [f"fa{i}" for i in range(5)]
    send(broker, after, 0.1)
    wait_for(lambda: all(data.llen(f"farm:diag:{m}") for m in before + after), timeout=120,
             what="every task, from before the freeze and after it")
    took = time.monotonic() - thawed_at
    assert worker.alive()
    twice = sum(int(data.llen(f"farm:diag:{m}")) > 1 for m in before + after)
    print(f"broker frozen: the worker's loop turned {turned:.1f} s into the freeze; every task "
          f"done {took:.1f} s after the thaw, {twice} ran twice")

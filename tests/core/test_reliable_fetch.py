"""Reliable fetch under real Celery workers: the farm's app consumes through
config/reliable_redis.py, and a worker whose consumer (the worker's parent process) dies at each
point between taking a message off its queue and recording it loses nothing: another worker runs
the task, once."""

from __future__ import annotations

import pytest
import redis

from config.celery_app import app
from tests.support.workers import FAST_REDELIVERY, WorkerFactory, wait_for

pytestmark = pytest.mark.integration

FAST = {**FAST_REDELIVERY, "FARM_INFLIGHT_HEARTBEAT": "5"}


def runs(data: redis.Redis, marker: str) -> list[str]:
    return list(data.lrange(f"farm:diag:{marker}", 0, -1))


@pytest.mark.redis_broker
def test_the_farm_consumes_through_reliable_fetch() -> None:
    with app.connection_for_read() as conn:
        assert type(conn.transport).__module__ == "config.reliable_redis"
        assert conn.as_uri().startswith("redis://")  # Flower and inspect see plain Redis


@pytest.mark.parametrize(("point", "idle"), [
    ("fetched", False),  # taken by the fetch script with the task already queued
    ("moved", True),  # taken by the blocking wait of an idle worker
    ("claimed", True),
])
def test_a_worker_killed_between_taking_and_recording_a_message_loses_nothing(
        data: redis.Redis, broker: redis.Redis, workers: WorkerFactory, point: str,
        idle: bool) -> None:
    marker = f"fetch-{point}"
    if not idle:
        app.send_task("diag.sleep", args=[0.0, marker], queue="maintenance")
    # One queue: the blocking wait is on it (with several, on the first in the cycle's order)
    doomed = workers("batch", env={**FAST, "PHOTOFARM_FAULT_POINT": point}, node=f"doomed-{point}",
                     queues=["maintenance"], ready=idle)
    if idle:  # once it blocks in its wait (its liveness key is set then)
        wait_for(lambda: broker.keys("_kombu.inflight.alive.*"), what="the worker to wait")
        app.send_task("diag.sleep", args=[0.0, marker], queue="maintenance")
    wait_for(lambda: not doomed.alive(), timeout=60, what=f"the worker to die at {point}")
    doomed.kill()  # its pool children too, as supervisord's killasgroup would
    assert runs(data, marker) == []
    assert broker.llen("maintenance") == 0  # not on its queue: only the records hold it

    workers("batch", env=FAST, node=f"rescuer-{point}")
    wait_for(lambda: runs(data, marker), timeout=60, what="another worker to run the task")
    assert len(runs(data, marker)) == 1

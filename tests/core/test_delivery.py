"""Delivery guarantees that only show up with real workers: priority by queue, redelivery after a
SIGKILL, warm shutdown on SIGTERM, and `farm ping` through every queue."""

from __future__ import annotations

import time

import pytest
import redis

from config.celery_app import app
from config.queues import QUEUES
from tests.support.workers import FAST_REDELIVERY, WorkerFactory, wait_for
from workers.cli import main as farm

pytestmark = pytest.mark.integration



def finished(data: redis.Redis, marker: str) -> list[float]:
    return [float(t) for t in data.lrange(f"farm:diag:{marker}", 0, -1)]


def started(data: redis.Redis, marker: str) -> int:
    return int(data.llen(f"farm:diag:{marker}:started"))


def test_a_batch_flood_does_not_delay_a_users_post(
        data: redis.Redis, workers: WorkerFactory) -> None:
    from config.settings import get_settings
    from tasks import enqueue
    from tasks.blobs import open_store
    from tests.support.corpus import oriented_jpeg

    open_store(get_settings()).put("originals/1.jpg", oriented_jpeg(1), content_type="image/jpeg")
    workers("cpu")
    workers("batch")
    flood = 40
    for _ in range(flood):
        app.send_task("diag.sleep", args=[0.1, "flood"], queue="photos_batch")
    time.sleep(0.3)  # the flood is already being worked through
    sent = time.time()
    enqueue.photo_uploaded(1, 2, "originals/1.jpg")
    wait_for(lambda: data.hget("farm:metrics:tasks", "photos.process:ok"), what="the user's post")
    done_at = time.time()
    flood_done_by_then = sum(t <= done_at for t in finished(data, "flood"))
    assert flood_done_by_then < flood / 2, "the post waited behind the batch flood"
    assert done_at - sent < 2.0
    # The flood itself still completes.
    wait_for(lambda: len(finished(data, "flood")) == flood, timeout=30, what="the flood")


def test_sigkilled_worker_task_is_redelivered_and_completes(
        data: redis.Redis, workers: WorkerFactory) -> None:
    first = workers("batch", env=FAST_REDELIVERY, node="doomed")
    task_id = app.send_task("diag.sleep", args=[1.5, "survivor"]).id
    wait_for(lambda: started(data, "survivor"), what="the task to start")
    first.kill()  # the whole process group, mid-task: nothing is acked
    assert finished(data, "survivor") == []

    workers("batch", env=FAST_REDELIVERY, node="rescuer")
    wait_for(lambda: finished(data, "survivor"), timeout=30, what="redelivery")
    assert started(data, "survivor") == 2
    assert data.get(f"farm:deliveries:{task_id}:0") == "1"  # the restored start, counted
    time.sleep(1.0)
    assert len(finished(data, "survivor")) == 1  # ran to completion exactly once


def sweep_lock_expiry(broker: redis.Redis, seconds: float = 10.0) -> float:
    """The expiry (s) a live worker gives the restore sweep's lock, read off the wire."""
    with broker.monitor() as m:
        deadline = time.monotonic() + seconds
        for event in m.listen():
            cmd = [word.strip('"').upper() for word in event["command"].split()]
            if cmd[:2] == ["SET", "UNACKED_MUTEX"] and "PX" in cmd:
                return int(cmd[cmd.index("PX") + 1]) / 1000
            if time.monotonic() > deadline:
                raise AssertionError("no restore sweep seen")
    raise AssertionError("monitor ended")


def test_a_worker_killed_holding_the_sweep_lock_stalls_redelivery_only_briefly(
        data: redis.Redis, broker: redis.Redis, workers: WorkerFactory) -> None:
    first = workers("batch", env=FAST_REDELIVERY, node="doomed")
    expiry = sweep_lock_expiry(broker)
    assert expiry <= 5, "kombu's 300 s default would stall redelivery for five minutes"
    task_id = app.send_task("diag.sleep", args=[1.0, "after-stale-lock"]).id
    wait_for(lambda: started(data, "after-stale-lock"), what="the task to start")
    first.kill()
    # What the dead worker would leave had it died mid-sweep: the lock, held for its expiry.
    broker.set("unacked_mutex", "dead-sweeper", px=int(expiry * 1000))
    workers("batch", env=FAST_REDELIVERY, node="rescuer")
    wait_for(lambda: finished(data, "after-stale-lock"), timeout=30, what="redelivery")
    assert started(data, "after-stale-lock") == 2
    assert data.get(f"farm:deliveries:{task_id}:0") == "1"


def test_sigterm_is_a_warm_shutdown(data: redis.Redis, workers: WorkerFactory) -> None:
    w = workers("batch")
    app.send_task("diag.sleep", args=[1.5, "warm"])
    wait_for(lambda: started(data, "warm"), what="the task to start")
    assert w.terminate(timeout=20) == 0
    assert len(finished(data, "warm")) == 1, "the running task finished before the exit"
    assert "Warm shutdown" in w.log()


def test_farm_ping_reports_every_queue(data: redis.Redis, workers: WorkerFactory,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    for profile in ("cpu", "feed", "io", "batch"):
        workers(profile, ready=False)  # ping waits for them to come up
    assert farm(["ping", "--timeout", "30"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list(QUEUES)
    assert all(line.endswith(" ms") for line in lines)


def test_farm_ping_fails_when_a_queue_has_no_worker(
        data: redis.Redis, workers: WorkerFactory, capsys: pytest.CaptureFixture[str]) -> None:
    workers("cpu")
    assert farm(["ping", "--timeout", "1.5", "--queues", "photos,push"]) == 1
    out = capsys.readouterr().out
    assert "no answer" in out and "no worker answered on push" in out
    assert farm(["ping", "--queues", "nope"]) == 2

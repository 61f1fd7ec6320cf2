"""A warm shutdown (SIGTERM to a prefork worker's parent: what supervisord sends on every stop) at
the moments that used to go wrong loses nothing, runs nothing twice, and never waits on a task a
child holds; cut short by SIGKILL, it still loses nothing.

The worker sends itself the SIGTERM at a chosen point (PHOTOFARM_SIGTERM_AT, workers/faults.py),
so no test depends on lucky timing. The broker's own records say whether a message can still run
again: a task acked and gone from the queue, the unacked records and every in-flight list runs no
more, so "exactly once" is read off the server instead of waited out. On RabbitMQ (--broker amqp)
the same: what a stopped worker's connection held is back on the queue when it closes.
"""

from __future__ import annotations

import subprocess
import time

import pytest
import redis

from config.celery_app import app
from tests.support.broker_queues import BrokerQueues
from tests.support.workers import FAST_REDELIVERY, WorkerFactory, wait_for
from workers.launcher import WorkerProcess

pytestmark = pytest.mark.integration

FAST = {**FAST_REDELIVERY, "FARM_INFLIGHT_HEARTBEAT": "5"}
QUEUE = "maintenance"  # where diag.sleep goes
# A stop here takes about 2 s (each child exits a second after its last task). Celery's own flush
# held it about 30 s: the child waited that long for the parent to read its result.
STOP_BOUND = 12.0


def runs(data: redis.Redis, marker: str) -> int:
    return int(data.llen(f"farm:diag:{marker}"))


def stop_took(w: WorkerProcess, since: float) -> float:
    """Wait for a worker that stops by itself; seconds since ``since``, failing past the bound."""
    assert w.proc is not None
    try:
        assert w.proc.wait(timeout=STOP_BOUND) == 0, w.log()[-3000:]
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the warm shutdown took over {STOP_BOUND}s; log:\n"
                             f"{w.log()[-3000:]}") from None
    return time.monotonic() - since


def test_sigterm_right_after_a_child_is_handed_a_task(
        data: redis.Redis, queues: BrokerQueues, workers: WorkerFactory) -> None:
    """The issue's case: the pool has written the task into a child's pipe and the child has not
    said it took it yet. The child runs it; the parent must read its result and ack it."""
    w = workers("batch", env={**FAST, "PHOTOFARM_SIGTERM_AT": "handed"}, concurrency=2,
                node="handed", queues=[QUEUE])
    sent = time.monotonic()
    task_id = app.send_task("diag.sleep", args=[0.3, "handed"]).id
    wait_for(lambda: "Warm shutdown" in w.log(), what="the SIGTERM at the hand-over")
    # published while the worker stops: its consumer may hold it (an in-flight list): it must
    # go back to the queue, not run and not vanish
    app.send_task("diag.sleep", args=[0.0, "late"])
    took = stop_took(w, sent)
    log = w.log()
    assert log.index("Warm shutdown") < log.index(f"task=diag.sleep id={task_id} status=ok"), \
        "the SIGTERM came after the task, not at its hand-over"
    assert " succeeded in " not in log  # Celery's duplicate of the farm's line is off
    # the farm's pool (workers/prefork.py) saw it handed over and not yet taken by the child
    assert "pool flush: 1 task(s) already handed to a child" in log
    assert runs(data, "handed") == 1
    assert data.llen("farm:diag:handed:started") == 1
    assert not data.exists(f"farm:deliveries:{task_id}:0")  # never restored: no redelivery
    assert queues.held(QUEUE) == {"queued": 1, "unacked": 0, "inflight": 0}, \
        "the task was not acked (it would run again), or the late one is not back on its queue"
    assert runs(data, "late") == 0
    print(f"stop after a hand-over: {took:.2f}s")


def test_sigterm_right_after_a_message_arrives(
        data: redis.Redis, queues: BrokerQueues, workers: WorkerFactory) -> None:
    """A task the consumer has taken but no child holds goes back to the queue, and the next
    worker runs it once."""
    w = workers("batch", env={**FAST, "PHOTOFARM_SIGTERM_AT": "received"}, concurrency=2,
                node="received", queues=[QUEUE])
    sent = time.monotonic()
    task_id = app.send_task("diag.sleep", args=[0.0, "received"]).id
    took = stop_took(w, sent)
    assert f"Task diag.sleep[{task_id}] received" in w.log()
    assert runs(data, "received") == 0
    assert queues.held(QUEUE) == {"queued": 1, "unacked": 0, "inflight": 0}
    print(f"stop after a receipt: {took:.2f}s")

    workers("batch", env=FAST, node="next", queues=[QUEUE])
    wait_for(lambda: runs(data, "received"), timeout=30, what="the next worker to run it")
    wait_for(lambda: queues.held(QUEUE)["unacked"] == 0, what="its ack")
    assert runs(data, "received") == 1
    assert queues.held(QUEUE) == {"queued": 0, "unacked": 0, "inflight": 0}


def test_a_warm_shutdown_cut_short_by_sigkill_loses_nothing(
        data: redis.Redis, queues: BrokerQueues, workers: WorkerFactory) -> None:
    """supervisord SIGKILLs the group when stopwaitsecs runs out: here while the handed task
    still runs and the consumer may hold a message published during the stop. Both come back
    (the visibility timeout, the in-flight heartbeat) and run once."""
    w = workers("batch", env={**FAST, "PHOTOFARM_SIGTERM_AT": "handed"}, concurrency=2,
                node="cut", queues=[QUEUE])
    app.send_task("diag.sleep", args=[1.5, "cut"])
    wait_for(lambda: "Warm shutdown" in w.log(), what="the SIGTERM at the hand-over")
    app.send_task("diag.sleep", args=[0.0, "cut-late"])
    wait_for(lambda: data.exists("farm:diag:cut:started"), what="the task to start")
    w.kill()  # the grace period is over: the whole group, mid-task
    assert runs(data, "cut") == 0
    assert sum(queues.held(QUEUE).values()) == 2

    workers("batch", env=FAST, node="rescuer", queues=[QUEUE])
    wait_for(lambda: runs(data, "cut") and runs(data, "cut-late"), timeout=40,
             what="both tasks to come back and run")
    wait_for(lambda: queues.held(QUEUE) == {"queued": 0, "unacked": 0, "inflight": 0},
             what="both acked")
    assert (runs(data, "cut"), runs(data, "cut-late")) == (1, 1)

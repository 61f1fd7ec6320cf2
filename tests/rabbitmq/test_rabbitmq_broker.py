"""The farm on RabbitMQ: real `farm worker` processes on a real server (tests/rabbitmq/conftest.py),
quorum queues with the delivery limit, redelivery after a worker dies, and what the broker
dead-letters landing in the farm's dead-letter store."""

from __future__ import annotations

import itertools
import uuid

import pytest
import redis
from kombu import Connection

from config.celery_app import FarmCelery
from config.queues import QUEUES
from config.rabbitmq import DEADLETTER
from config.settings import get_settings
from tasks.core.deadletter import DeadLetterStore
from tests.support.workers import WorkerFactory, wait_for
from workers.launcher import WorkerProcess

pytestmark = pytest.mark.integration


def _marks(data: redis.Redis, marker: str) -> tuple[int, int]:
    """(starts, finishes) diag.sleep recorded for ``marker``."""
    s = get_settings()
    return data.llen(s.key("diag", marker, "started")), data.llen(s.key("diag", marker))


def _depth(amqp: Connection, queue: str) -> int:
    """Messages ready in ``queue`` (not those a consumer holds)."""
    ok = amqp.default_channel.queue_declare(queue=queue, passive=True)
    return int(ok.message_count)


def _holder(task_id: str, *candidates: WorkerProcess) -> WorkerProcess:
    """The worker whose log says it received the task."""
    def find() -> WorkerProcess | None:
        return next((w for w in candidates if task_id in w.log()), None)
    return wait_for(find, 10, what=f"a worker to log {task_id}")  # type: ignore[return-value]


def test_quorum_queues_carry_the_delivery_limit_and_dead_letter_exchange(
        amqp_app: FarmCelery) -> None:
    conf = amqp_app.conf
    assert conf.broker_transport_options == {"confirm_publish": True}
    assert conf.worker_detect_quorum_queues
    queues = {q.name: q for q in conf.task_queues}
    assert set(queues) == set(QUEUES)
    for q in queues.values():
        assert q.queue_arguments["x-queue-type"] == "quorum"
        assert q.queue_arguments["x-delivery-limit"] == 2 * get_settings().max_deliveries + 2
        assert q.queue_arguments["x-dead-letter-exchange"] == DEADLETTER


def test_batch_worker_runs_tasks_sent_over_rabbitmq(
        amqp_app: FarmCelery, amqp_env: dict[str, str], workers: WorkerFactory,
        data: redis.Redis) -> None:
    workers("batch", env=amqp_env)
    marker = uuid.uuid4().hex
    for _ in range(3):
        amqp_app.send_task("diag.sleep", args=[0.05, marker])
    wait_for(lambda: _marks(data, marker) == (3, 3), 20, what="three diag.sleep runs")


def test_task_of_a_killed_worker_is_redelivered_and_completed_once(
        amqp_app: FarmCelery, amqp_env: dict[str, str], workers: WorkerFactory,
        data: redis.Redis, amqp: Connection) -> None:
    first = workers("batch", env=amqp_env, node="first", ready=False)
    second = workers("batch", env=amqp_env, node="second", ready=False)
    first.wait_ready()
    second.wait_ready()
    marker = uuid.uuid4().hex
    task_id = amqp_app.send_task("diag.sleep", args=[1.5, marker]).id
    wait_for(lambda: _marks(data, marker)[0] == 1, 10, what="the task to start")
    holder = _holder(task_id, first, second)
    holder.kill()  # SIGKILL, pool included: RabbitMQ requeues what the connection held
    wait_for(lambda: _marks(data, marker)[1] == 1, 15, what="the task to finish elsewhere")
    assert _marks(data, marker) == (2, 1)
    assert _depth(amqp, "maintenance") == 0
    assert DeadLetterStore(data, get_settings()).count() == 0


def test_message_whose_workers_keep_dying_ends_in_the_dead_letter_store(
        amqp_app: FarmCelery, amqp_env: dict[str, str], workers: WorkerFactory,
        data: redis.Redis, amqp: Connection) -> None:
    marker = uuid.uuid4().hex
    task_id = amqp_app.send_task("diag.sleep", args=[60, marker]).id
    deliveries = int(amqp_env["FARM_MAX_DELIVERIES"])
    for n in range(1, deliveries + 1):  # each worker dies under it
        worker = workers("batch", env=amqp_env, node=f"doomed{n}")
        wait_for(lambda n=n: _marks(data, marker)[0] == n, 10, what=f"start {n}")  # type: ignore[misc]
        worker.kill()
    store = DeadLetterStore(data, get_settings())
    # Over the cap: the next worker's task base counts the starts and dead-letters it, as on
    # Redis (RabbitMQ's own limit is a looser backstop).
    workers("batch", env=amqp_env, node="next")
    entry = wait_for(lambda: store.get(task_id), 10, what="the dead letter")
    assert entry.task == "diag.sleep"  # type: ignore[attr-defined]
    assert entry.reason == "redelivered"  # type: ignore[attr-defined]
    assert entry.error.startswith(f"WorkerLost: started {deliveries} times")  # type: ignore[attr-defined]
    assert entry.args == [60, marker]  # type: ignore[attr-defined]
    assert entry.queue == "maintenance"  # type: ignore[attr-defined]
    assert _marks(data, marker) == (deliveries, 0)  # never started again
    assert _depth(amqp, DEADLETTER) == 0 and _depth(amqp, "maintenance") == 0


def test_retry_with_backoff_goes_through_native_delayed_delivery(
        amqp_app: FarmCelery, amqp_env: dict[str, str], workers: WorkerFactory,
        data: redis.Redis) -> None:
    worker = workers("batch", env=amqp_env)
    marker = uuid.uuid4().hex
    amqp_app.send_task("diag.flaky", args=[marker, 2])  # fails twice (transient), then succeeds
    s = get_settings()
    wait_for(lambda: data.get(s.key("diag", marker, "done")) == "3", 20, what="the third run")
    assert "retry not published" not in worker.log()
    assert "delayed delivery" not in worker.log()  # Celery logs only its failures to set it up
    runs = [float(t) for t in data.lrange(s.key("diag", marker, "runs"), 0, -1)]
    # backoffs of 0.2 s and so were rounded up to whole seconds: never early
    assert all(b - a >= 0.9 for a, b in itertools.pairwise(runs)), runs


def test_rejected_message_keeps_the_consumers_record_and_leaves_the_broker(
        amqp_app: FarmCelery, amqp_env: dict[str, str], workers: WorkerFactory,
        data: redis.Redis, amqp: Connection) -> None:
    worker = workers("batch", env=amqp_env)
    with amqp_app.producer_or_acquire() as producer:  # a task no worker knows, by hand
        producer.publish([[1], {}, {}], exchange="farm", routing_key="maintenance",
                         headers={"task": "no.such_task", "id": "hostile-1"},
                         serializer="json")
    store = DeadLetterStore(data, get_settings())
    entry = wait_for(lambda: store.get("hostile-1"), 10, what="the consumer's dead letter")
    assert entry.reason == "unknown task"  # type: ignore[attr-defined]
    # rejected, so RabbitMQ dead-lettered it too: the sweep acks that copy, keeps the record
    wait_for(lambda: "broker dead letters acked=1 already recorded" in worker.log(), 15,
             what="the broker's copy to be acked")
    assert _depth(amqp, DEADLETTER) == 0 and _depth(amqp, "maintenance") == 0
    assert store.get("hostile-1").reason == "unknown task"  # type: ignore[union-attr]
    assert store.count() == 1

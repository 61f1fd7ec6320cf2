"""A real worker's task events: every one reaches a subscriber (Flower's view), in a few PUBLISH
messages rather than several per task, and what is buffered leaves before the worker exits."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from config.celery_app import app
from tests.support.workers import WorkerFactory, wait_for

pytestmark = pytest.mark.integration


class Events:
    """Task events as Flower receives them: kombu's fanout messages on the broker's pub/sub."""

    def __init__(self, broker: redis.Redis) -> None:
        db = broker.connection_pool.connection_kwargs.get("db", 0)
        self.pubsub = broker.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        self.pubsub.psubscribe(f"/{db}.celeryev/*")
        self.messages = 0  # PUBLISHes that carried task events
        self.seen: dict[str, set[str]] = {}  # task id -> event types

    def read(self) -> None:
        while (message := self.pubsub.get_message(timeout=0.05)) is not None:
            envelope = json.loads(message["data"])
            body: Any = json.loads(base64.b64decode(envelope["body"]))
            tasks = [e for e in (body if isinstance(body, list) else [body])
                     if e.get("type", "").startswith("task-")]
            self.messages += bool(tasks)
            for event in tasks:
                self.seen.setdefault(event["uuid"], set()).add(event["type"])

    def complete(self, ids: list[str]) -> bool:
        self.read()
        whole = {"task-received", "task-started", "task-succeeded"}
        return all(whole <= self.seen.get(i, set()) for i in ids)


@pytest.fixture
def events(broker: redis.Redis) -> Iterator[Events]:
    e = Events(broker)
    yield e
    e.pubsub.close()


def test_many_tasks_events_share_few_messages(data: redis.Redis, events: Events,
                                              workers: WorkerFactory) -> None:
    workers("batch", concurrency=2, node="events")
    ids = [app.send_task("diag.sleep", args=[0.0]).id for _ in range(60)]
    wait_for(lambda: events.complete(ids), timeout=60, what="every task's three events")
    # 180 events; one PUBLISH per event loop turn would be well over 60 (Celery's own flush).
    assert events.messages <= 30, f"{events.messages} messages for 60 tasks' events"


def test_buffered_events_leave_before_the_worker_exits(data: redis.Redis, events: Events,
                                                       workers: WorkerFactory) -> None:
    # A minute's flush interval: the events can only leave with the shutdown's flush.
    w = workers("batch", concurrency=2, node="held", env={"FARM_EVENT_FLUSH_SECONDS": "60"})
    ids = [app.send_task("diag.sleep", args=[0.0, "held"]).id for _ in range(5)]
    wait_for(lambda: data.llen("farm:diag:held") == 5, what="the five tasks to finish")
    time.sleep(0.5)  # a flush at Celery's own pace would have sent them by now
    events.read()
    assert not any(events.seen.get(i) for i in ids), "15 events, under a batch, sent early"
    assert w.terminate(timeout=30) == 0
    wait_for(lambda: events.complete(ids), timeout=10, what="the flushed events")

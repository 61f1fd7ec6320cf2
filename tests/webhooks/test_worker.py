"""The tasks through real worker processes: webhooks.deliver sent by name as the photo pipeline
sends it, retried by the task base for the one subscriber that failed; webhooks.replay on the
batch queue after a resume."""

from __future__ import annotations

import pytest
import redis

from config.celery_app import app
from tasks.webhooks import delivery
from tasks.webhooks.subscriptions import Subscriptions
from tests.support.workers import WorkerFactory, wait_for
from tests.webhooks.conftest import OWNER, Subscribe, new_photo_id
from workers.demo_webhooks import WebhookReceiver

pytestmark = pytest.mark.integration


def test_deliver_and_replay_through_workers(subscribe: Subscribe, receiver: WebhookReceiver,
                                            subs: Subscriptions, data: redis.Redis,
                                            workers: WorkerFactory) -> None:
    subscribe("user", OWNER, "/good")
    subscribe("tag", "sunset", "/flaky")
    held, _ = subscribe("user", OWNER, "/held")
    subs.pause(held.id)
    receiver.fail_next(1, status=503, path="/flaky")
    workers("io", concurrency=2)
    workers("batch", concurrency=1, queues=["webhooks_batch"])

    photo = new_photo_id()
    app.send_task("webhooks.deliver", kwargs={"photo_id": photo, "owner_id": OWNER,
                                               "caption": "#sunset"}, queue="webhooks")
    receiver.wait_for(2, path="/flaky", timeout=20)  # failed once, retried by the task base
    wait_for(lambda: data.hget("farm:metrics:tasks", "webhooks.deliver:ok"),
             what="the deliver task to end")
    assert data.hget("farm:metrics:tasks", "webhooks.deliver:retry") == "1"
    assert len(receiver.received("/good")) == 1  # the retry skipped the delivered one
    assert all(r.verified for r in receiver.received())
    assert receiver.received("/held") == []

    resumed, task_id, _ = delivery.resume(held.id)
    assert task_id and resumed.active
    (got,) = receiver.wait_for(1, path="/held", timeout=20)
    assert got.webhook_id == f"msg_{held.id}_{photo}" and got.verified
    wait_for(lambda: data.hget("farm:metrics:tasks", "webhooks.replay:ok"),
             what="the replay task to end")

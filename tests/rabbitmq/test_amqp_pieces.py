"""The RabbitMQ pieces that need no server: delays in whole seconds, and the record made from a
message the broker dead-lettered."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from config.celery_app import celery_config
from config.rabbitmq import whole_second_delay
from config.settings import load_settings
from tasks.core.amqp_deadletter import to_dead_letter


@pytest.mark.parametrize(("given", "sent"), [
    ({"countdown": 0.2}, {"countdown": 1}),
    ({"countdown": 2.01}, {"countdown": 3}),
    ({"countdown": 5}, {"countdown": 5}),
    ({"countdown": 0}, {}),
    ({"countdown": -1.5}, {}),
    ({}, {}),
    ({"eta": None, "countdown": None}, {"countdown": None}),
])
def test_delays_become_whole_seconds_rounded_up(given: dict[str, Any],
                                                sent: dict[str, Any]) -> None:
    whole_second_delay(given)
    assert given == sent


def test_an_eta_becomes_a_countdown() -> None:
    options: dict[str, Any] = {"eta": datetime.now(UTC) + timedelta(seconds=4.5)}
    whole_second_delay(options)
    assert options == {"countdown": 5}
    past: dict[str, Any] = {"eta": datetime.now(UTC) - timedelta(seconds=3)}
    whole_second_delay(past)
    assert past == {}


def test_redis_configuration_is_untouched_by_rabbitmq_support() -> None:
    conf = celery_config(load_settings({"FARM_BROKER_URL": "redis://127.0.0.1:1/0"}))
    assert "confirm_publish" not in conf["broker_transport_options"]
    assert all(not q.queue_arguments for q in conf["task_queues"])
    assert conf["task_queues"][0].exchange.type == "direct"
    amqp = celery_config(load_settings({"FARM_BROKER_URL": "amqp://u:p@rabbit:5672/farm",
                                        "FARM_MAX_DELIVERIES": "4"}))
    # a backstop above the task base's cap of 4 starts (config/rabbitmq.py)
    assert amqp["task_queues"][0].queue_arguments["x-delivery-limit"] == 10
    assert amqp["task_queues"][0].exchange.type == "topic"


DEATH = {"x-first-death-reason": "delivery_limit", "x-first-death-queue": "photos",
         "x-death": [{"count": 1, "reason": "delivery_limit", "queue": "photos"}]}


def test_over_the_delivery_limit_is_redelivered_with_its_arguments() -> None:
    body = json.dumps([["p1"], {"owner": 7}, {}]).encode()
    entry = to_dead_letter(body, {**DEATH, "task": "photos.process", "id": "t-1", "retries": 2})
    assert (entry.id, entry.task, entry.queue, entry.reason) == (
        "t-1", "photos.process", "photos", "redelivered")
    assert (entry.args, entry.kwargs, entry.attempts, entry.replayable) == (
        ["p1"], {"owner": 7}, 3, True)


def test_a_body_that_is_not_celerys_is_kept_as_received_and_not_replayable() -> None:
    entry = to_dead_letter(b"\xff\xfe garbage", {"x-first-death-reason": "rejected"})
    assert entry.reason == "rejected"
    assert entry.id.startswith("amqp-") and entry.args == []
    assert "garbage" in entry.body and not entry.replayable

"""The operator's tools on a RabbitMQ broker: `farm stats` and the metrics exporter read queue
depths with passive declares, `farm deadletter` adopts what the broker dead-lettered, and
`farm top` shows the depths (not the in-flight count: RabbitMQ does not give it)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis
from kombu import Connection

from config.queues import QUEUES
from config.settings import get_settings
from workers.cli import main as farm
from workers.metrics_exporter import BrokerCollector

pytestmark = pytest.mark.integration


def test_stats_and_metrics_read_rabbitmq_queue_depths(
        amqp_app: Any, data: redis.Redis, amqp: Connection,
        capsys: pytest.CaptureFixture[str]) -> None:
    for n in range(2):  # no worker serves photos_batch here
        amqp_app.send_task("photos.reprocess", args=[f"p{n}"], queue="photos_batch")
    try:
        assert farm(["stats", "--json"]) == 0
        stats = json.loads(capsys.readouterr().out)
        assert stats["queues"]["photos_batch"] == 2
        assert stats["queues"]["push"] == 0
        metrics = {m.name: m for m in BrokerCollector(get_settings()).collect()}
        assert metrics["farm_broker_up"].samples[0].value == 1
        depths = {s.labels["queue"]: s.value for s in metrics["farm_queue_depth"].samples}
        assert depths["photos_batch"] == 2
    finally:
        amqp.default_channel.queue_purge("photos_batch")


def test_deadletter_list_and_top_on_rabbitmq(amqp_env: dict[str, str], data: redis.Redis,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert farm(["deadletter", "list", "--json"]) == 0
    captured = capsys.readouterr()
    assert "broker not read" not in captured.err
    assert farm(["top", "--once", "--json", "--interval", "0.1"]) == 0
    snap = json.loads(capsys.readouterr().out)
    assert set(snap["queues"]) == set(QUEUES)  # depths by passive declares
    assert snap["inflight"] is None  # RabbitMQ does not say how many are held


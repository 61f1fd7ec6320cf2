"""`farm stats`: queue depths from the broker, outcomes from the farm's counters."""

from __future__ import annotations

import json

import pytest
import redis

from config.celery_app import app
from config.settings import get_settings
from tasks.core import metrics
from workers.cli import main as farm


def test_stats_reports_queues_outcomes_and_dead_letters(
        data: redis.Redis, broker: redis.Redis, capsys: pytest.CaptureFixture[str]) -> None:
    app.send_task("diag.sleep", args=[0.1], queue="push")
    app.send_task("diag.sleep", args=[0.1], queue="push")
    s = get_settings()
    pipe = data.pipeline()
    metrics.record(pipe, s, "photos.process", "ok", 40.0)
    metrics.record(pipe, s, "photos.process", "ok", 60.0)
    metrics.record(pipe, s, "photos.process", "retry", 5.0)
    pipe.execute()
    metrics.incr(data, s, "push.sent", 3)

    assert farm(["stats", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["queues"]["push"] == 2 and stats["queues"]["photos"] == 0
    assert stats["tasks"]["photos.process"] == {"ok": 2, "retry": 1, "deadletter": 0,
                                                "requeued": 0, "interrupted": 0, "ms": 105.0}
    assert stats["counters"] == {"push.sent": 3} and stats["deadletters"] == 0

    assert farm(["stats"]) == 0
    text = capsys.readouterr().out
    assert "push                    2" in text
    assert "photos.process" in text and "35.0" in text  # mean over its 3 runs

"""The photo-sweep job: records left in processing past any run's reach are failed, with when;
the index it reads is kept by the records themselves; it runs under beat and by hand."""

from __future__ import annotations

import json
import time
from dataclasses import replace

import pytest
import redis

from config.settings import get_settings
from schedules.batch import get_job
from tasks.photos.records import FAILED, PROCESSING, READY, PhotoRecords
from tasks.photos.stuck import GRACE, fail_stuck, stuck_after
from workers.cli import main as farm


def records(data: redis.Redis) -> PhotoRecords:
    return PhotoRecords(data, get_settings())


def started(data: redis.Redis, photo_id: int, ago: float) -> None:
    """A record whose latest attempt began ``ago`` seconds ago."""
    recs = records(data)
    recs.start(photo_id, 42, f"originals/{photo_id}.jpg", 1)
    data.zadd(recs.index, {str(photo_id): time.time() - ago})


def test_the_window_is_one_attempt_and_its_retry_from_the_settings() -> None:
    s = replace(get_settings(), task_time_limit=300, retry_max_delay=900.0,
                visibility_timeout=3600, restore_interval=30)
    assert stuck_after(s) == 300 + 900 + 3600 + 30 + GRACE == 4890


def test_records_past_the_window_are_failed_others_kept_and_ended_ones_unlisted(
        data: redis.Redis) -> None:
    s = get_settings()
    window = stuck_after(s)
    recs = records(data)
    started(data, 1, ago=window + 120)  # lost: no run will end it
    started(data, 2, ago=window - 120)  # still within what a run and its retry can take
    started(data, 3, ago=window + 120)
    recs.ready(3, {}, {})
    data.zadd(recs.index, {"3": time.time() - window - 120})  # ended but left listed
    data.zadd(recs.index, {"4": time.time() - window - 120})  # listed, record deleted since

    out = fail_stuck(data, s)
    assert out == {"failed": 1, "ended": 2, "window_s": round(window)}
    lost = recs.get(1)
    assert lost is not None and lost.status == FAILED
    assert lost.reason.startswith("stuck in processing since 20")
    assert f"no run ended it within {window:.0f}s" in lost.reason
    assert [r.status for r in (recs.get(2), recs.get(3))] == [PROCESSING, READY]  # type: ignore
    assert recs.get(4) is None  # a deleted photo is not brought back
    assert data.zrange(recs.index, 0, -1) == ["2"]
    assert fail_stuck(data, s)["failed"] == 0  # nothing twice


def test_an_attempt_that_started_after_the_listing_is_not_failed(data: redis.Redis) -> None:
    recs = records(data)
    started(data, 5, ago=10_000)
    cutoff = time.time() - 5_000
    [(photo_id, _)] = recs.processing_since(cutoff, 10)
    recs.start(5, 42, "originals/5.jpg", 1, attempt=2)  # a retry begins meanwhile
    assert recs.failed_stuck(photo_id, "stuck", cutoff) is False
    rec = recs.get(5)
    assert rec is not None and (rec.status, rec.attempt) == (PROCESSING, 2)


def test_a_record_failed_by_the_sweep_becomes_ready_if_its_run_was_only_slow(
        data: redis.Redis) -> None:
    recs = records(data)
    started(data, 6, ago=stuck_after(get_settings()) + 1)
    assert fail_stuck(data, get_settings())["failed"] == 1
    recs.ready(6, {"full": {"key": "k"}}, {})
    rec = recs.get(6)
    assert rec is not None and (rec.status, rec.reason) == (READY, "")


def test_it_reads_the_index_in_batches(data: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    from tasks.photos import stuck

    monkeypatch.setattr(stuck, "BATCH", 3)
    for photo_id in range(10, 20):
        started(data, photo_id, ago=stuck_after(get_settings()) + photo_id)
    assert fail_stuck(data, get_settings())["failed"] == 10
    assert data.zcard(records(data).index) == 0


def test_farm_batch_photo_sweep_runs_it_and_beat_sends_it_every_five_minutes(
        data: redis.Redis, capsys: pytest.CaptureFixture[str]) -> None:
    entry = get_job("photo-sweep")
    assert entry.job.task == "batch.photo_sweep" and entry.period is not None
    assert entry.period.total_seconds() == 300
    started(data, 7, ago=stuck_after(get_settings()) + 1)
    assert farm(["batch", "photo-sweep", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["status"], out["failed"]) == ("done", 1)
    rec = records(data).get(7)
    assert rec is not None and rec.status == FAILED

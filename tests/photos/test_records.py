"""Every photos.process / photos.reprocess run ends its record ready or failed, with a reason, on
every path; a late failure never turns a ready record failed. In-process, against the session's
Redis and file store: the tasks run through the task base with ``apply`` (the policy, the dead
letter and its hook), the pipeline's storage step replaced where a path needs a failure."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
import redis

from config.celery_app import app
from config.settings import get_settings
from tasks.blobs import open_store
from tasks.core import publish
from tasks.core.deadletter import DeadLetterStore
from tasks.core.errors import TransientError
from tasks.core.redis import data_redis
from tasks.photos import pipeline
from tasks.photos import tasks as photo_tasks  # registers photos.*
from tasks.photos.records import FAILED, PROCESSING, READY, PhotoRecord, PhotoRecords
from tests.support import corpus

VARIANTS = {"full": {"key": "photos/1/full.jpg", "width": 1, "height": 1, "bytes": 1, "url": "u"}}


def records(client: redis.Redis | None = None) -> PhotoRecords:
    return PhotoRecords(client or data_redis(), get_settings())


def record(photo_id: int) -> PhotoRecord:
    rec = records().get(photo_id)
    assert rec is not None, f"no record for photo {photo_id}"
    return rec


def listed(data: redis.Redis) -> dict[str, float]:
    return dict(data.zrange(get_settings().key("photos", "processing"), 0, -1, withscores=True))


def run(task: str, **kwargs: Any) -> Any:
    """The task through the task base, in this process (``retries`` sets the attempt)."""
    retries = kwargs.pop("retries", 0)
    assert photo_tasks.process.name in app.tasks
    return app.tasks[task].apply(kwargs=kwargs, task_id=f"{task}-{time.monotonic_ns()}",
                                 retries=retries)


def storing(monkeypatch: pytest.MonkeyPatch, step: Callable[..., Any]) -> None:
    monkeypatch.setattr(pipeline, "make_and_store_variants", step)


# --- the record and its index -------------------------------------------------------------------

def test_start_lists_the_record_as_processing_and_its_end_unlists_it(data: redis.Redis) -> None:
    recs = records(data)
    before = time.time()
    recs.start(1, 42, "originals/1.jpg", 1, attempt=2)
    assert (record(1).status, record(1).attempt) == (PROCESSING, 2)
    assert listed(data).keys() == {"1"} and listed(data)["1"] >= before
    recs.ready(1, VARIANTS, {"resize": 1.0})
    assert record(1).status == READY and listed(data) == {}

    recs.start(2, 42, "originals/2.jpg", 1)
    assert recs.failed(2, "bad\nthing  happened") is True
    rec = record(2)
    assert (rec.status, rec.reason) == (FAILED, "bad thing happened") and listed(data) == {}


def test_a_failure_never_turns_a_ready_record_failed(data: redis.Redis) -> None:
    recs = records(data)
    recs.start(3, 42, "originals/3.jpg", 1)
    recs.ready(3, VARIANTS, {})
    assert recs.failed(3, "late") is False
    assert recs.failed_late(3, "later", create=True) is False
    assert recs.failed_stuck(3, "stuck", cutoff=time.time() + 10) is False
    rec = record(3)
    assert (rec.status, rec.reason, rec.variants) == (READY, "", VARIANTS)


def test_a_ready_landing_between_any_two_steps_of_a_failure_still_wins(
        data: redis.Redis) -> None:
    """The check-and-set is one step on the server: whichever command of the failure a
    concurrent ready lands before (or after its last), the record ends ready, never failed.
    Read-then-write from Python would let a ready land between the read and the write."""

    class Interleaved(redis.Redis):
        def __init__(self, *args: Any, before: int, competitor: Callable[[], None],
                     **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.calls, self.before, self.competitor = 0, before, competitor

        def execute_command(self, *args: Any, **options: Any) -> Any:
            self.calls += 1
            if self.calls == self.before:
                self.competitor()
            return super().execute_command(*args, **options)

    other = records(data)
    for before in range(1, 6):  # the failure's first command, its second... and after its last
        photo_id = 100 + before
        other.start(photo_id, 42, "originals/x.jpg", 1)
        client = Interleaved(
            connection_pool=redis.ConnectionPool.from_url(get_settings().redis_url,
                                                          decode_responses=True),
            before=before, competitor=lambda p=photo_id: other.ready(p, VARIANTS, {}))
        records(client).failed_late(photo_id, "late failure", create=True)
        if client.calls < before:  # the failure was over before the ready came
            other.ready(photo_id, VARIANTS, {})
        assert record(photo_id).status == READY, f"ready landing before command {before}"
        client.close()


# --- every path of a run ------------------------------------------------------------------------

def test_retries_keep_the_record_processing_noting_the_attempt_then_it_ends_ready(
        data: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, int]] = []

    def flaky(photo_id: int, *args: Any, **kwargs: Any) -> dict[str, Any]:
        rec = record(photo_id)
        seen.append((rec.status, rec.attempt))
        if len(seen) < 3:
            raise TransientError("S3 put photos/4/full.jpg: connection refused")
        return VARIANTS

    storing(monkeypatch, flaky)
    run("photos.process", photo_id=4, owner_id=42, original_key="originals/4.jpg")
    assert seen == [(PROCESSING, 1), (PROCESSING, 2), (PROCESSING, 3)]
    rec = record(4)
    assert (rec.status, rec.reason, rec.attempt) == (READY, "", 3) and listed(data) == {}


def test_exhausted_retries_end_the_record_failed_with_the_last_error(
        data: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    def down(*args: Any, **kwargs: Any) -> dict[str, Any]:
        raise TransientError("S3 head originals/5.jpg: EndpointConnectionError: could not "
                             "connect")

    storing(monkeypatch, down)
    last = get_settings().retry_max  # the final attempt: no retry left after it
    result = run("photos.process", photo_id=5, owner_id=42, original_key="originals/5.jpg",
                 retries=last)
    assert isinstance(result.result, TransientError)
    rec = record(5)
    assert rec.status == FAILED and rec.attempt == last + 1 and listed(data) == {}
    assert rec.reason == ("retries exhausted: TransientError: S3 head originals/5.jpg: "
                          "EndpointConnectionError: could not connect")
    [entry] = DeadLetterStore(data, get_settings()).list()
    assert entry.reason == "exhausted"


def test_a_bug_ends_the_record_failed_as_an_internal_error_a_refusal_with_its_own_reason(
        data: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    run("photos.process", photo_id=7, owner_id=42, original_key="originals/none.jpg")
    rec = record(7)  # the dead letter's hook found it failed already: the run's words stay
    assert (rec.status, rec.reason) == (FAILED, "original not found in storage: "
                                                "originals/none.jpg")

    def broken(*args: Any, **kwargs: Any) -> dict[str, Any]:
        raise KeyError("width")

    storing(monkeypatch, broken)
    run("photos.process", photo_id=6, owner_id=42, original_key="originals/6.jpg")
    rec = record(6)
    assert (rec.status, rec.reason) == (FAILED, "internal error: KeyError: 'width'")
    assert listed(data) == {}


@pytest.mark.parametrize(("kwargs", "named"), [
    ({"photo_id": 8, "owner_id": -1, "original_key": "originals/8.jpg"}, "owner_id"),
    ({"photo_id": 8, "owner_id": 42, "original_key": "originals/8.jpg", "share_to": ["myspace"]},
     "share_to"),
    ({"photo_id": 8, "owner_id": 42}, "original_key"),
    ({"photo_id": 8, "owner_id": 42, "original_key": "k", "colour": "red"}, "colour"),
])
def test_an_invalid_argument_ends_the_record_failed_naming_it(
        data: redis.Redis, kwargs: dict[str, Any], named: str) -> None:
    run("photos.process", **kwargs)
    rec = record(8)
    assert rec.status == FAILED and rec.reason.startswith("InvalidArgument: ")
    assert named in rec.reason and listed(data) == {}
    # An invalid photo_id leaves nothing to mark: no record is made for any of them.
    for photo_id in (-1, 0, "8", "9", 2**63, None, 1.5, True):
        run("photos.process", **{**kwargs, "photo_id": photo_id})
    assert data.keys("farm:photo:*") == ["farm:photo:8"] and listed(data) == {}
    assert DeadLetterStore(data, get_settings()).count() == 9


def test_a_duplicate_that_fails_leaves_a_ready_photo_ready(
        data: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    """At least once: the first delivery made the photo ready and died before sending the rest of
    the post; the redelivery's sends fail until its retries run out. The photo stays ready."""
    recs = records(data)
    recs.start(9, 42, "originals/9.jpg", 1)
    recs.ready(9, VARIANTS, {})

    def broker_down(*args: Any, **kwargs: Any) -> None:
        raise TransientError("publish feeds.fanout: broker unreachable")

    monkeypatch.setattr(publish, "send", broker_down)
    run("photos.process", photo_id=9, owner_id=42, original_key="originals/9.jpg",
        retries=get_settings().retry_max)
    [entry] = DeadLetterStore(data, get_settings()).list()
    assert entry.reason == "exhausted"
    rec = record(9)
    assert (rec.status, rec.reason, rec.variants) == (READY, "", VARIANTS)
    # and an invalid copy of its message, or the redelivery cap, changes nothing either
    run("photos.process", photo_id=9, owner_id="42", original_key="originals/9.jpg")
    pipeline.upload_dead_lettered({"photo_id": 9}, "redelivered", "WorkerLost: started 3 times")
    assert record(9).status == READY


def test_a_reprocess_that_fails_ends_failed_and_an_unknown_photo_gets_no_record(
        data: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    open_store(get_settings()).put("originals/10.jpg", corpus.oriented_jpeg(1),
                                   content_type="image/jpeg")
    run("photos.process", photo_id=10, owner_id=42, original_key="originals/10.jpg")
    assert record(10).status == READY

    def down(*args: Any, **kwargs: Any) -> dict[str, Any]:
        raise TransientError("S3 put photos/10/full.jpg: SlowDown")

    storing(monkeypatch, down)
    run("photos.reprocess", photo_id=10, retries=get_settings().retry_max)
    rec = record(10)
    assert (rec.status, rec.version) == (FAILED, 2)
    assert rec.reason == "retries exhausted: TransientError: S3 put photos/10/full.jpg: SlowDown"

    run("photos.reprocess", photo_id=11)  # no such photo: refused, and no record made for it
    assert records(data).get(11) is None
    assert DeadLetterStore(data, get_settings()).count() == 2


def test_the_redelivery_cap_ends_the_record_failed(data: redis.Redis) -> None:
    records(data).start(12, 42, "originals/12.jpg", 1)
    pipeline.upload_dead_lettered(
        {"photo_id": 12, "owner_id": 42, "original_key": "originals/12.jpg"}, "redelivered",
        "WorkerLost: started 3 times and never finished")
    rec = record(12)
    assert (rec.status, rec.reason) == (FAILED, "WorkerLost: started 3 times and never finished")
    assert listed(data) == {}

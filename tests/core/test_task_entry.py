"""The argument check at every task's entry, through real workers: a bad message sent by name
(a buggy web tier, a hand-written or replayed message: anything that bypasses tasks/enqueue.py)
fails permanently at once, dead-lettered with one line naming the argument, never run, never
retried, never counted "ok"."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from config.celery_app import app
from config.queues import ROUTES
from config.settings import get_settings
from tasks.core import metrics
from tasks.core.deadletter import DeadLetterStore
from tasks.photos.records import PhotoRecords
from tests.support.workers import WorkerFactory, wait_for

pytestmark = pytest.mark.integration

PHOTO = {"owner_id": 42, "original_key": "originals/e.jpg", "caption": "", "share_to": []}
PUSH = {"alert": "hello", "notification_id": "entry1"}

# (task, kwargs, the argument the dead letter must name); everything else in each is valid.
BAD: list[tuple[str, dict[str, Any], str]] = [
    ("photos.process", {**PHOTO, "photo_id": 2**70}, "photo_id"),
    ("photos.process", {**PHOTO, "photo_id": 9101, "owner_id": "abc"}, "owner_id"),
    ("photos.process", {**PHOTO, "photo_id": 9102, "share_to": ["myspace"]}, "share_to"),
    ("push.notify", {**PUSH, "user_ids": ["a", "b"]}, "user_ids"),
    ("push.notify", {**PUSH, "user_ids": [-1]}, "user_ids"),
    ("push.notify", {**PUSH, "user_ids": list(range(1, 10001))}, "user_ids"),
]


def send_raw(name: str, kwargs: dict[str, Any]) -> str:
    """Publish by name, as a caller bypassing the enqueue API would. The test session's strict
    mode refuses arguments over 4096 bytes of JSON at publish time; a real web tier has no such
    check, so it is lifted for this one publish (10,000 user ids are ~58 KB)."""
    strict = app.strict_arg_bytes
    app.strict_arg_bytes = None
    try:
        return str(app.send_task(name, kwargs=kwargs, queue=ROUTES[name]).id)
    finally:
        app.strict_arg_bytes = strict


def test_bad_messages_sent_by_name_are_dead_lettered_permanently_naming_the_argument(
        data: redis.Redis, workers: WorkerFactory) -> None:
    s = get_settings()
    store = DeadLetterStore(data, s)
    workers("cpu")  # queue photos
    workers("io")  # queue push
    sent = [(send_raw(name, kwargs), name, kwargs, argument) for name, kwargs, argument in BAD]

    wait_for(lambda: store.count() == len(BAD), timeout=60, what="every bad message dead-lettered")
    # The outcome counters are written as the task returns, a moment after the dead letter.
    wait_for(lambda: all(metrics.read(data, s).get(name, {}).get("deadletter") == count
                         for name, count in (("photos.process", 3), ("push.notify", 3))),
             timeout=30, what="outcome counters")

    for task_id, name, kwargs, argument in sent:
        entry = store.get(task_id)
        assert entry is not None, f"{name} {argument}: no dead letter"
        assert (entry.task, entry.reason, entry.attempts) == (name, "permanent", 1), entry
        assert entry.error.startswith("InvalidArgument: "), entry.error
        assert f"{argument}" in entry.error.removeprefix("InvalidArgument: ").split(":")[0]
        assert "\n" not in entry.error
        assert entry.kwargs == kwargs  # kept as sent, for an operator to read and replay
        assert entry.queue == ROUTES[name]

    counts = metrics.read(data, s)
    for name in ("photos.process", "push.notify"):
        assert (counts[name]["ok"], counts[name]["retry"], counts[name]["deadletter"]) == (0, 0, 3)
    # Refused before the pipeline ran, no follow-on job; the web tier still learns the photo
    # failed when its id was valid (an invalid id names no photo to mark).
    records = PhotoRecords(data, s)
    assert records.get(2**70) is None
    for photo_id, argument in ((9101, "owner_id"), (9102, "share_to")):
        record = records.get(photo_id)
        assert record is not None and record.status == "failed"
        assert record.reason.startswith(f"InvalidArgument: {argument}")
    assert not (set(counts) - {"photos.process", "push.notify"})

"""Messages already on the broker when the farm is upgraded still run: 24 raw broker messages,
captured from the code before the restructuring into packages (tests/fixtures/
messages-before-packages.json: kombu's JSON envelopes, one or more per task kind), are put on their
queues byte for byte as kombu's Redis transport stores them, and real workers of every profile
run each one to "ok" on the new code."""

from __future__ import annotations

import base64
import json
import re
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from config.queues import QUEUES, ROUTES
from config.settings import get_settings
from tasks.blobs import open_store
from tasks.core import metrics
from tasks.core.deadletter import DeadLetterStore
from tasks.core.validation import check
from tasks.photos.records import PhotoRecords
from tasks.webhooks.subscriptions import Subscriptions
from tests.support import corpus
from tests.support.workers import WorkerFactory, wait_for
from workers.launcher import WorkerProcess

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).parent / "fixtures" / "messages-before-packages.json"
CAPTURED: list[dict[str, Any]] = json.loads(FIXTURES.read_text())
PHOTO_ID = 1893120473423561728  # the photo the captured photos.* messages are about
ORIGINAL = "originals/fixture.jpg"
LATER = {"photos.reprocess"}  # needs the record photos.process makes: sent once that is ready


def task_of(entry: dict[str, Any]) -> str:
    return str(entry["message"]["headers"]["task"])


def id_of(entry: dict[str, Any]) -> str:
    return str(entry["message"]["headers"]["id"])


def arguments_of(entry: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    args, kwargs, _embed = json.loads(base64.b64decode(entry["message"]["body"]))
    return args, kwargs


def push(broker: redis.Redis, entry: dict[str, Any]) -> None:
    """Put a captured message on its queue as kombu's Redis transport does (Channel._put: LPUSH of
    the JSON envelope onto the list named after the queue; priority 0 has no suffix)."""
    message = json.loads(json.dumps(entry["message"]))  # a copy: the fixture stays as captured
    headers = message["headers"]
    if headers.get("expires"):
        # Beat stamps its batch messages with `expires` about one period after sending; these
        # were captured a while ago, so as stored they would be revoked on receipt as expired,
        # never run. Give them a deadline in the future, as if beat had just sent them.
        headers["expires"] = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert message["properties"]["priority"] == 0
    broker.lpush(entry["queue"], json.dumps(message))


def ran_ok(logs: str) -> dict[str, str]:
    """task id -> task name, for every task the workers' timing lines say ended "ok"."""
    return {m["id"]: m["task"]
            for m in re.finditer(r"task=(?P<task>\S+) id=(?P<id>\S+) status=ok\b", logs)}


def test_the_fixture_is_what_it_says() -> None:
    assert len(CAPTURED) == 24
    assert len({id_of(e) for e in CAPTURED}) == 24
    kinds = {task_of(e) for e in CAPTURED}
    # every kind but those declared since the capture
    assert kinds == set(ROUTES) - {"batch.photo_sweep"}, "a captured message per task kind"
    for entry in CAPTURED:
        assert entry["queue"] in QUEUES
        assert entry["message"]["content-type"] == "application/json"
        # The new entry check accepts every captured message's arguments as they are.
        args, kwargs = arguments_of(entry)
        check(task_of(entry), args, kwargs)


def test_messages_captured_before_the_restructuring_run_ok_on_the_new_code(
        data: redis.Redis, broker: redis.Redis, workers: WorkerFactory) -> None:
    s = get_settings()
    store = DeadLetterStore(data, s)
    # Preconditions the captured messages assume: the upload's original is in the blob store.
    open_store(s).put(ORIGINAL, corpus.oriented_jpeg(6), content_type="image/jpeg")
    # and the subscription the captured webhooks.replay names (id 7) exists: an unknown one is
    # now a permanent failure, as a replay for no one should be.
    data.set(s.key("webhooks", "next_id"), 6)
    sub, _ = Subscriptions(data, s).add("user", 1, "https://hooks.example/cb", verify=False)
    assert sub.id == 7

    first = [e for e in CAPTURED if task_of(e) not in LATER]
    later = [e for e in CAPTURED if task_of(e) in LATER]
    for entry in first:
        push(broker, entry)
    started: list[WorkerProcess] = [workers(p) for p in ("cpu", "feed", "io", "batch")]

    def logs() -> str:
        return "".join(w.log() for w in started)

    def finished(entries: list[dict[str, Any]]) -> bool:
        done = ran_ok(logs())
        return all(id_of(e) in done or store.get(id_of(e)) for e in entries)

    def each_ran_ok(entries: list[dict[str, Any]]) -> None:
        dead = {e.id: f"{e.task}: {e.reason}: {e.error}" for e in store.list(100)}
        assert dead == {}, "captured messages dead-lettered on the new code"
        done = ran_ok(logs())
        for entry in entries:  # each one, by its own task id
            assert done.get(id_of(entry)) == task_of(entry), f"{task_of(entry)} {id_of(entry)}"

    wait_for(lambda: finished(first), timeout=90, what="the captured messages to run")
    each_ran_ok(first)
    record = PhotoRecords(data, s).get(PHOTO_ID)
    assert record is not None and record.status == "ready" and record.followons
    assert record.version == 1 and set(record.variants) == {"full", "sq612", "sq306", "sq150"}

    for entry in later:
        push(broker, entry)
    wait_for(lambda: finished(later), timeout=60, what="the captured reprocess to run")
    each_ran_ok(CAPTURED)
    record = PhotoRecords(data, s).get(PHOTO_ID)
    assert record is not None and record.version == 2  # remade under the same keys

    # The counters agree, per task name: "ok" rose by its captured messages, plus the follow-ons
    # the captured upload sends (fan-out, a cross-post per chosen network, webhooks); every run
    # the workers logged was counted, and nothing retried or failed.
    captured = Counter(task_of(e) for e in CAPTURED)
    follow_ons = Counter({"feeds.fanout": 1, "social.crosspost": 2, "webhooks.deliver": 1})

    def counted_as_logged() -> bool:
        counts = metrics.read(data, s)
        logged = Counter(ran_ok(logs()).values())
        return logged == captured + follow_ons and all(
            counts.get(name, {}).get("ok") == n for name, n in logged.items())

    wait_for(counted_as_logged, timeout=30, what="the ok counters")
    counts = metrics.read(data, s)
    assert {n: (c["retry"], c["deadletter"]) for n, c in counts.items()
            if c["retry"] or c["deadletter"]} == {}
    # Their own effects, where a task has one to see.
    assert data.lrange("farm:diag:fixture", 0, -1), "diag.sleep recorded its finish"
    assert data.get("farm:diag:fixture:done"), "diag.flaky succeeded"

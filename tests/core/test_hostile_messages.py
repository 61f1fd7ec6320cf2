"""Messages a worker cannot run, pushed into a real queue the way a buggy or hostile producer
would: each becomes a dead letter (counted, listed, never replayed), the worker stays up and goes
on with the next good task, and nothing one message carries is written in megabytes or reaches a
terminal raw."""

from __future__ import annotations

import json
import pickle
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from config.celery_app import app
from config.settings import get_settings
from tasks.core import metrics
from tasks.core.deadletter import DeadLetter, DeadLetterStore
from tests.support.workers import WorkerFactory, wait_for
from workers.cli import main as farm

pytestmark = pytest.mark.integration

ESC = "\x1b[2J\x1b[31m"  # clear the screen, then red: must never reach a terminal or log raw


def publish(body: bytes | Any, headers: dict[str, Any], *, content_type: str | None,
            encoding: str = "utf-8", queue: str = "feeds") -> None:
    """One message onto ``queue`` through kombu, as any producer (not Celery's send_task) can."""
    with app.connection_for_write() as conn:
        conn.Producer().publish(body, exchange="farm", routing_key=queue, headers=headers,
                                content_type=content_type, content_encoding=encoding,
                                serializer=None if content_type else "json")


def by_marker(store: DeadLetterStore, marker: str) -> DeadLetter | None:
    """The dead letter whose id or body holds ``marker`` (hostile messages choose their ids)."""
    return next((e for e in store.list(1000) if marker in e.id or marker in e.body), None)


class Events:
    """Every task event the workers send, captured off the broker as Flower does."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self._receiver: Any = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with app.connection_for_read() as conn:
            self._receiver = app.events.Receiver(conn, handlers={"*": self.seen.append})
            self._receiver.capture(limit=None, timeout=None, wakeup=False)

    def __enter__(self) -> Events:
        self._thread.start()
        wait_for(lambda: self._receiver is not None, what="event receiver")
        return self

    def __exit__(self, *_: object) -> None:
        self._receiver.should_stop = True
        self._thread.join(10)


@pytest.fixture
def events() -> Iterator[Events]:
    with Events() as captured:
        yield captured


def test_messages_a_worker_cannot_run_are_dead_lettered_and_it_goes_on(
        data: redis.Redis, broker: redis.Redis, workers: WorkerFactory, events: Events,
        capsys: pytest.CaptureFixture[str]) -> None:
    s = get_settings()
    store = DeadLetterStore(data, s)
    worker = workers("feed")  # consumes the feeds queue

    # marker -> the reason its dead letter must give
    expected = {
        "m-pickle": "undecodable", "m-notjson": "undecodable", "m-unknown": "unknown task",
        "m-shape": "bad protocol", "m-header": "bad protocol", "m-notask": "bad protocol",
        "m-big": "too large", "m-mid": "permanent", "m-garbage": "undecodable",
    }
    # A pickle: code execution for whoever can write to the broker, so never decoded.
    publish(pickle.dumps({"m-pickle": 1}), {"task": "feeds.rebuild", "id": "m-pickle"},
            content_type="application/x-python-serialize", encoding="binary")
    publish(b"{m-notjson: not json", {"task": "feeds.rebuild", "id": "m-notjson"},
            content_type="application/json")
    publish([[1], {f"k{ESC}": 1}, {}], {"task": f"no.such.task{ESC}", "id": "m-unknown"},
            content_type=None)
    publish({"m-shape": [1]}, {"task": "feeds.rebuild", "id": "m-shape"}, content_type=None)
    publish([["m-header"], {}, {}], {"task": "feeds.rebuild", "id": 12345, "m-header": 1,
                            "timelimit": "m-header"}, content_type=None)
    publish(["m-notask"], {}, content_type=None)
    # The finding: one 5 MB argument sent by name. Strict mode (the tests' publish check) is
    # lifted: a real producer has none.
    strict, app.strict_arg_bytes = app.strict_arg_bytes, None
    try:
        app.send_task("feeds.activity", [1, "m-big" + "x" * 5_000_000, 2, "e"], queue="feeds")
        # Under the consumer's cap on bodies, over the arguments' limit: refused at task entry.
        mid = app.send_task("feeds.activity", [1, "m-mid" + "x" * 66_000, 2, "e"],
                            queue="feeds").id
    finally:
        app.strict_arg_bytes = strict
    # Not even a kombu message: reliable fetch sets it aside; the worker adopts it.
    broker.lpush("feeds", b"m-garbage\x00\xff" + ESC.encode())

    wait_for(lambda: all(by_marker(store, m) for m in expected), timeout=60,
             what="a dead letter for every message")
    for marker, reason in expected.items():
        entry = by_marker(store, marker)
        assert entry is not None
        assert entry.reason == reason, (marker, entry)
        assert "\n" not in entry.error and len(entry.error) < 1000, entry.error
        assert not entry.replayable and (entry.args, entry.kwargs) == ([], {})
        assert len(entry.to_json()) < 8 * 1024, (marker, len(entry.to_json()))
        if marker != "m-garbage":
            assert entry.queue == "feeds", (marker, entry.queue)
    assert "ContentDisallowed" in by_marker(store, "m-pickle").error  # type: ignore[union-attr]
    big = by_marker(store, "m-big")
    assert big is not None and big.size > 5_000_000 and big.task == "feeds.activity"
    assert "5,0" in big.error and "limit" in big.error
    assert store.get(mid) is not None and "InvalidArgument: feeds.activity: arguments are 66,0" \
        in store.get(mid).error  # type: ignore[union-attr]
    unknown = by_marker(store, "m-unknown")
    assert unknown is not None and unknown.task == f"no.such.task{ESC}"  # kept as sent...

    # ...and the worker is alive and runs the next good task.
    assert worker.alive()
    app.send_task("diag.ping", args=[time.time()], queue="feeds")
    wait_for(lambda: metrics.read(data, s).get("diag.ping", {}).get("ok") == 1, timeout=30,
             what="a good task after the bad ones")
    counters = metrics.counters(data, s)
    assert counters.get("messages.undecodable") == 3, counters
    assert counters.get("messages.unknown_task") == 1, counters
    assert counters.get("messages.bad_protocol") == 3, counters
    assert counters.get("messages.too_large") == 1, counters
    assert metrics.read(data, s)["feeds.activity"]["deadletter"] == 1

    # Nothing of the 5 MB in the log or in any task event; no escape sequence in the log.
    log = worker.log()
    assert len(log) < 64 * 1024 and "\x1b" not in log, len(log)
    assert "xxxxxxxxxx" * 300 not in log
    wait_for(lambda: any(e.get("uuid") == mid and e["type"] == "task-failed"
                         for e in events.seen), what="the refused task's task-failed event")
    assert all(len(json.dumps(e, default=str)) < 4096 for e in events.seen), \
        max(len(json.dumps(e, default=str)) for e in events.seen)

    # The operator's view: counted, listed escaped, never replayed.
    assert farm(["stats"]) == 0
    out = capsys.readouterr().out
    assert f"dead letters: {len(expected)}" in out and "messages.too_large: 1" in out
    assert farm(["deadletter", "list"]) == 0
    listed = capsys.readouterr().out
    assert "\x1b" not in listed and "no.such.task\\x1b[2J" in listed
    assert "unknown task" in listed and "too large" in listed
    assert farm(["deadletter", "show", "m-unknown"]) == 0
    shown = capsys.readouterr().out
    assert "\x1b" not in shown and "m-unknown" in shown
    assert farm(["deadletter", "replay", "m-unknown"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "never ran (unknown task)" in err
    assert store.get("m-unknown") is not None  # still there for the operator

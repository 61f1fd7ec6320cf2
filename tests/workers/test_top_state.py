"""`farm top`'s data: samples read from the session's real Redis, the rates two samples make,
the workers its heartbeats show, and names from the wire shown escaped."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from xml.etree import ElementTree

import pytest
import redis
from rich.console import Console

from config.celery_app import app
from config.queues import QUEUES
from config.settings import get_settings
from tasks.core import metrics
from tasks.core.deadletter import DeadLetterStore
from workers.top_state import Sample, parse_tasks, sample, sent_time, snapshot
from workers.top_view import render
from workers.top_workers import WorkerWatch


def _record(data: redis.Redis, task: str, outcome: str, n: int, ms: float = 10.0) -> None:
    pipe = data.pipeline()
    for _ in range(n):
        metrics.record(pipe, get_settings(), task, outcome, ms)
    pipe.execute()


def test_a_sample_reads_depths_ages_in_flight_counters_and_dead_letters(
        data: redis.Redis, broker: redis.Redis) -> None:
    s = get_settings()
    before = time.time()
    for _ in range(3):
        app.send_task("diag.sleep", args=[0], queue="photos")
    broker.lpush("push", b"not a kombu message")  # no headers: its age is unknown
    broker.hset("unacked", mapping={"tag1": "x", "tag2": "y"})
    _record(data, "photos.process", "ok", 2, 30.0)
    _record(data, "photos.process", "deadletter", 1, 40.0)
    metrics.incr(data, s, "push.sent", 5)
    data.zadd(DeadLetterStore(data, s).index, {"a": 1.0, "b": 2.0})

    got = sample(broker, data, s)

    assert got.depths == {**dict.fromkeys(QUEUES, 0), "photos": 3, "push": 1}
    oldest = got.oldest_sent["photos"]
    assert oldest is not None and before - 1 <= oldest <= got.at
    assert got.oldest_sent["push"] is None and got.oldest_sent["feeds"] is None
    assert got.inflight == 2 and got.deadletters == 2 and got.counters == {"push.sent": 5}
    assert got.tasks["photos.process"]["ok"] == 2 and got.tasks["photos.process"]["ms"] == 100

    snap = snapshot(got)  # one sample: levels, no rates yet
    assert snap["queues"]["photos"]["depth"] == 3 and snap["queues"]["photos"]["in_per_s"] is None
    age = snap["queues"]["photos"]["oldest_age_s"]
    assert age is not None and 0 <= age < 30
    assert snap["queues"]["push"]["oldest_age_s"] is None  # waiting, but no stamp: unknown
    assert snap["tasks"]["photos.process"]["mean_ms"] == pytest.approx(33.3)
    assert snap["failure_rate"] is None and snap["deadletters_new"] is None
    json.dumps(snap)  # what --json prints


def test_the_oldest_message_is_the_one_at_the_consuming_end(
        data: redis.Redis, broker: redis.Redis) -> None:
    # kombu LPUSHes and consumers pop from the right: the right end has waited longest.
    broker.lpush("feeds", json.dumps({"headers": {"farm_sent": 1000.0}}))
    broker.lpush("feeds", json.dumps({"headers": {"farm_sent": 2000.0}}))
    assert sample(broker, data, get_settings()).oldest_sent["feeds"] == 1000.0


@pytest.mark.parametrize("raw", [
    None, b"", b"\xff\xfe", b"[1, 2]", b'{"headers": 3}', b'{"headers": {}}',
    b'{"headers": {"farm_sent": true}}', b'{"headers": {"farm_sent": "12"}}',
    b'{"headers": {"farm_sent": NaN}}', b'{"headers": {"farm_sent": -5}}',
    b'{"headers": {"farm_sent": 1e999}}',
])
def test_a_message_without_a_usable_send_stamp_has_no_known_age(raw: bytes | None) -> None:
    assert sent_time(raw) is None


def test_task_counters_that_are_not_numbers_are_left_out() -> None:
    got = parse_tasks({"a.b:ok": "3", "a.b:ms": "12.5", "a.b:retry": "lots", "nocolon": "1",
                       "x:ok": "inf"})
    assert got == {"a.b": {"ok": 3.0, "retry": 0.0, "deadletter": 0.0, "requeued": 0.0,
                           "interrupted": 0.0, "ms": 12.5}}


def _sample(mono: float, depths: dict[str, int], tasks: dict[str, dict[str, float]],
            deadletters: int = 0) -> Sample:
    zero = dict.fromkeys((*metrics.OUTCOMES, "ms"), 0.0)
    return Sample(at=1000.0 + mono, mono=mono, depths={**dict.fromkeys(QUEUES, 0), **depths},
                  oldest_sent=dict.fromkeys(QUEUES), inflight=0,
                  tasks={k: {**zero, **v} for k, v in tasks.items()}, counters={},
                  deadletters=deadletters)


def test_rates_per_task_and_per_queue_come_from_two_samples() -> None:
    prev = _sample(10.0, {"photos": 10}, {
        "photos.process": {"ok": 100, "ms": 1000},
        "push.notify": {"ok": 50, "deadletter": 5, "ms": 500}}, deadletters=5)
    cur = _sample(12.0, {"photos": 4}, {
        "photos.process": {"ok": 118, "retry": 2, "ms": 3000},  # 20 runs, 2000 ms
        "push.notify": {"ok": 56, "deadletter": 7, "requeued": 1, "ms": 800}}, deadletters=6)

    snap = snapshot(cur, prev)

    assert snap["interval_s"] == 2.0
    photos = snap["tasks"]["photos.process"]
    assert (photos["ok_per_s"], photos["retry_per_s"], photos["deadletter_per_s"]) == (9, 1, 0)
    assert photos["mean_ms"] == 100.0 and photos["ok"] == 118  # mean over the window's runs
    # photos: 20 runs ended in 2 s (10/s) while the queue shrank by 6 (3/s): 7/s came in.
    assert snap["queues"]["photos"]["out_per_s"] == 10 and snap["queues"]["photos"]["in_per_s"] == 7
    # push: the requeued run put its message back, so it is not "out".
    assert snap["queues"]["push"]["out_per_s"] == 4 and snap["queues"]["push"]["in_per_s"] == 4
    assert snap["queues"]["feeds"]["out_per_s"] == 0
    # Over the window: 24 ok and 2 dead letters finished for good.
    assert snap["failure_rate"] == pytest.approx(2 / 26, abs=1e-4)
    assert snap["deadletters_new"] == 1


def test_counters_that_were_reset_give_no_negative_rates() -> None:
    prev = _sample(0.0, {"photos": 5}, {"photos.process": {"ok": 100, "ms": 900}})
    cur = _sample(1.0, {}, {"photos.process": {"ok": 3, "ms": 30}})
    snap = snapshot(cur, prev)
    view = snap["tasks"]["photos.process"]
    assert view["ok_per_s"] == 0 and view["mean_ms"] == 10.0  # no run seen: mean of all runs
    assert snap["queues"]["photos"]["in_per_s"] == 0 and snap["failure_rate"] is None


def _event(kind: str, host: str, at: float, **fields: object) -> dict[str, object]:
    return {"type": f"worker-{kind}", "hostname": host, "local_received": at, **fields}


def test_workers_are_up_while_their_heartbeats_come_and_down_once_they_stop() -> None:
    watch = WorkerWatch(app)  # not started: events are fed by hand
    watch.on_event(_event("heartbeat", "cpu@a", 100.0, freq=2.0, active=1, processed=7,
                          loadavg=[0.5, 0.25, 0.1]))
    watch.on_event(_event("heartbeat", "io@b", 100.0, freq=2.0, active=0, processed=3))
    # A wakeup's heartbeat carries no counts: the last known ones stay.
    watch.on_event(_event("heartbeat", "cpu@a", 101.0, freq=5))
    watch.on_event(_event("offline", "io@b", 101.0, freq=2.0))
    for junk in ({"type": "worker-heartbeat"}, {"type": "task-started", "hostname": "x"},
                 _event("heartbeat", "odd@c", 100.0, active=True, loadavg=["x"])):
        watch.on_event(junk)

    at_102 = {w["node"]: w for w in watch.workers(now=102.0)}
    assert at_102["cpu@a"] == {"node": "cpu@a", "alive": True, "active": 1, "processed": 7,
                               "loadavg": [0.5, 0.25, 0.1], "heartbeat_age_s": 1.0}
    assert at_102["io@b"]["alive"] is False  # said goodbye
    assert at_102["odd@c"]["active"] is None and at_102["odd@c"]["loadavg"] is None
    assert not watch.counted()  # odd@c never sent its counts
    # Twice the announced period (5 s) without a beat: taken for down.
    assert {w["node"]: w["alive"] for w in watch.workers(now=111.5)}["cpu@a"] is False


def test_names_from_the_wire_are_shown_escaped_never_as_markup_or_escapes() -> None:
    cur = _sample(1.0, {"photos": 2}, {"evil\x1b[2J[bold]x[/bold]\u202e": {"ok": 1, "ms": 1}})
    workers = WorkerWatch(app)
    workers.on_event(_event("heartbeat", "node[red]\x1b]0;owned\x07@h", time.time(), freq=2.0))
    snap = snapshot(cur, None, workers.workers())
    console = Console(record=True, width=200, file=io.StringIO(), force_terminal=True)
    console.print(render(snap))
    text = console.export_text()
    assert "evil\\x1b[2J[bold]x[/bold]\\u202e" in text
    assert "node[red]\\x1b]0;owned\\x07@h" in text
    raw = console.export_text(styles=True)
    assert "\x1b[2J" not in raw and "\x1b]0;" not in raw and "\u202e" not in raw


def test_the_readme_picture_is_an_svg_of_every_queue() -> None:
    # docs/farm-top.svg: `farm top --once --svg docs/farm-top.svg` taken while `farm demo` ran.
    picture = Path(__file__).parents[2] / "docs" / "farm-top.svg"
    root = ElementTree.parse(picture).getroot()
    assert root.tag.endswith("svg")
    text = picture.read_text()
    assert all(q in text for q in QUEUES) and "workers&#160;4&#160;up" in text

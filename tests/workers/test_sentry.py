"""Sentry reporting from real worker processes, against a local stand-in for Sentry's ingest:
what a final failure's event holds (exception, tags), that no secret and no non-id argument is
in what is sent, that a retried blip sends nothing, and that without a DSN nothing is sent.
Each test stops its worker before counting: a stopped process has sent all it ever will."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from config.celery_app import app
from tests.support.sentry_ingest import SentryIngest, serve_ingest
from tests.support.workers import WorkerFactory, wait_for

pytestmark = pytest.mark.integration

# Distinctive values: finding one in what reached the ingest means it leaked.
S3_SECRET = "s3secretDO-NOT-SEND-8f2a61c0"
TOKEN_KEY = "tokenkeyDO-NOT-SEND-2b7e151628aed2a6abf7158809cf4f3c="
FLOWER_PASSWORD = "flowerpwDO-NOT-SEND-71d3"
CAPTION_TOKEN = "sk_live_4eC39HqLyjWDarjtT1zdp7dc"  # a token someone pasted into a caption
MARKER_TOKEN = "xoxb-17653672481-19874698323-pdFZKVeTuE8sk7oOcBrzbqgy"
SECRETS = (S3_SECRET, TOKEN_KEY, FLOWER_PASSWORD, CAPTION_TOKEN, MARKER_TOKEN)


@pytest.fixture
def sentry_ingest() -> Iterator[SentryIngest]:
    with serve_ingest() as ingest:
        yield ingest


def secret_env(ingest: SentryIngest) -> dict[str, str]:
    return {"FARM_SENTRY_DSN": ingest.dsn(), "FARM_SENTRY_ENVIRONMENT": "tests",
            "FARM_S3_SECRET_ACCESS_KEY": S3_SECRET, "FARM_TOKEN_KEYS": TOKEN_KEY,
            "FARM_FLOWER_PASSWORD": FLOWER_PASSWORD}


def events_for(ingest: SentryIngest, task: str) -> list[dict[str, Any]]:
    return [e for e in ingest.events() if e.get("tags", {}).get("task") == task]


def frames(event: dict[str, Any]) -> list[dict[str, Any]]:
    return [f for exc in event.get("exception", {}).get("values", [])
            for f in exc.get("stacktrace", {}).get("frames", [])]


@pytest.mark.parametrize("profile", ["cpu", "io"])  # prefork children, and threads
def test_a_final_failure_is_reported_with_tags_and_nothing_secret(
        profile: str, data: redis.Redis, workers: WorkerFactory,
        sentry_ingest: SentryIngest) -> None:
    w = workers(profile, queues=["photos", "maintenance"], env=secret_env(sentry_ingest))

    # A blip retried until it succeeds: nothing to report.
    app.send_task("diag.flaky", args=["blip", 2, "transient"], queue="maintenance")
    wait_for(lambda: data.get("farm:diag:blip:done"), timeout=30, what="the blip to succeed")
    # Then a bug (dead-lettered at once) and a missing original (permanent), with tokens in
    # arguments that their errors quote.
    app.send_task("diag.flaky", args=[MARKER_TOKEN, 1, "bug"], queue="maintenance")
    app.send_task("photos.process", kwargs={
        "photo_id": 7001, "owner_id": 42, "original_key": f"originals/{CAPTION_TOKEN}.jpg",
        "caption": f"my key is {CAPTION_TOKEN}"})
    wait_for(lambda: events_for(sentry_ingest, "photos.process")
             and events_for(sentry_ingest, "diag.flaky"), timeout=30, what="both events")
    assert w.terminate() == 0
    assert "sentry: errors reported to 127.0.0.1 (environment tests)" in w.log()
    assert "publickey" not in w.log()  # the DSN's key

    assert sentry_ingest.errors == []
    assert all("sentry_key=publickey" in auth for auth in sentry_ingest.auth)
    events = sentry_ingest.events()
    assert len(events) == 2, [e.get("logentry") or e.get("tags") for e in events]
    photo, = events_for(sentry_ingest, "photos.process")
    bug, = events_for(sentry_ingest, "diag.flaky")  # the bug's, not the blip's

    exc, = photo["exception"]["values"]
    assert exc["type"] == "PermanentError" and exc["mechanism"]["type"] == "celery"
    assert exc["value"] == "original not found in storage: [Filtered]"
    assert frames(photo)[-1]["function"] == "make_and_store_variants"
    assert photo["level"] == "error" and photo["environment"] == "tests"
    tags = photo["tags"]
    assert {k: str(tags.get(k)) for k in ("task", "queue", "attempt", "photo_id", "owner_id",
                                          "process")} == {
        "task": "photos.process", "queue": "photos", "attempt": "1", "photo_id": "7001",
        "owner_id": "42", "process": f"worker {profile}"}

    exc, = bug["exception"]["values"]
    assert (exc["type"], exc["value"]) == ("RuntimeError", "run 1 of [Filtered] hits a bug on "
                                                           "purpose")
    assert (bug["tags"]["queue"], str(bug["tags"]["attempt"])) == ("maintenance", "1")

    for event in events:  # no arguments, no local variables
        assert set(event["extra"]["celery-job"]) == {"task_name"}
        assert frames(event) and not any("vars" in f for f in frames(event))
    raw = sentry_ingest.raw()
    assert [s for s in SECRETS if s.encode() in raw] == []
    assert b"my key is" not in raw


def test_a_process_dying_under_every_delivery_is_reported_once_each(
        data: redis.Redis, workers: WorkerFactory, sentry_ingest: SentryIngest,
        on_amqp: bool) -> None:
    if on_amqp:
        pytest.skip("RabbitMQ fixed the queues' delivery limit when the session declared them")
    w = workers("batch", env={**secret_env(sentry_ingest), "FARM_MAX_DELIVERIES": "1"})
    app.send_task("diag.flaky", args=["doomed", 5, "crash"], queue="maintenance")
    wait_for(lambda: events_for(sentry_ingest, "diag.flaky"), timeout=30,
             what="the dead letter's event")
    assert w.terminate() == 0

    # The death (as billiard says it, not again as Celery's WorkerLostError), and the message
    # dead-lettered at its second delivery: one event each.
    events = sentry_ingest.events()
    assert sorted(e["logger"] for e in events) == ["farm.task", "multiprocessing"], [
        e["logentry"]["formatted"] for e in events]
    died, = [e for e in events if e["logger"] == "multiprocessing"]
    assert "exitcode 70" in died["logentry"]["formatted"]
    assert died["tags"] == {"process": "worker batch"}
    dead, = events_for(sentry_ingest, "diag.flaky")
    assert "reason=redelivered" in dead["logentry"]["formatted"]
    assert (dead["tags"]["queue"], str(dead["tags"]["attempt"])) == ("maintenance", "1")


def test_without_a_dsn_nothing_is_sent(
        data: redis.Redis, workers: WorkerFactory, sentry_ingest: SentryIngest) -> None:
    # sentry-sdk's own SENTRY_DSN is no switch: only FARM_SENTRY_DSN turns reporting on.
    w = workers("io", queues=["maintenance"], env={"SENTRY_DSN": sentry_ingest.dsn()})
    app.send_task("diag.flaky", args=["unseen", 1, "bug"], queue="maintenance")
    wait_for(lambda: data.llen("farm:diag:unseen:runs"), timeout=30, what="the task to run")
    wait_for(lambda: "status=deadletter" in w.log(), timeout=30, what="its dead letter")
    assert w.terminate() == 0
    assert sentry_ingest.envelopes == [] and sentry_ingest.errors == []


@pytest.mark.parametrize(("command", "variable", "value"), [
    ("worker", "FARM_SENTRY_DSN", "sentry.example/42-notadsn-7e1f"),
    ("beat", "FARM_SENTRY_DSN", "ftp://key@sentry.example/42"),
    ("worker", "FARM_SENTRY_DSN", "https://@sentry.example/42"),
    ("worker", "FARM_SENTRY_ENVIRONMENT", "staging/eu"),
])
def test_a_bad_sentry_setting_stops_start_up_naming_it(
        command: str, variable: str, value: str, tmp_path: Any) -> None:
    argv = [sys.executable, "-m", "workers.cli", command]
    argv += ["--profile", "io"] if command == "worker" else []
    env = {**os.environ, "FARM_SENTRY_DSN": "http://key@127.0.0.1:9/1", variable: value,
           "FARM_STATE_DIR": str(tmp_path)}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr[-2000:]
    line, = done.stderr.strip().splitlines()
    assert line.startswith(f"farm: configuration error: {variable}: ")
    if variable == "FARM_SENTRY_DSN":
        assert value not in done.stderr + done.stdout  # the DSN is a secret, even a bad one


def test_beat_starts_with_sentry_on(sentry_ingest: SentryIngest, tmp_path: Any) -> None:
    env = {**os.environ, **secret_env(sentry_ingest), "FARM_STATE_DIR": str(tmp_path)}
    log = tmp_path / "beat.log"
    with log.open("wb") as out:
        beat = subprocess.Popen([sys.executable, "-m", "workers.cli", "beat"], env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "sentry: errors reported to 127.0.0.1" in log.read_text(),
                 timeout=30, what="beat to start reporting")
    finally:
        beat.terminate()
        beat.wait(30)
    assert "publickey" not in log.read_text()
    assert sentry_ingest.envelopes == []  # nothing went wrong, nothing to say


def test_an_unreachable_sentry_holds_up_no_task_and_no_stop(
        data: redis.Redis, workers: WorkerFactory) -> None:
    with serve_ingest() as gone:
        dsn = gone.dsn()  # a port nothing listens on once the block ends
    w = workers("batch", env={"FARM_SENTRY_DSN": dsn})
    app.send_task("diag.flaky", args=["lost", 1, "bug"], queue="maintenance")
    app.send_task("diag.flaky", args=["fine", 0], queue="maintenance")
    wait_for(lambda: data.get("farm:diag:fine:done"), timeout=30, what="the next task")
    assert "reason=error" in w.log()
    started = time.monotonic()
    assert w.terminate() == 0
    assert time.monotonic() - started < 15

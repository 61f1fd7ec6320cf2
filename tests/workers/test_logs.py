"""What the farm's processes write to their logs: no S3 credentials even at DEBUG, and nothing a
message carries written raw (terminal escapes, forged lines)."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest
import redis

from config.celery_app import app
from config.settings import Settings, get_settings, replace
from tasks import enqueue
from tasks.blobs import open_store
from tasks.core.deadletter import DeadLetterStore
from tasks.photos.records import PhotoRecords
from tests.support import corpus
from tests.support.s3_server import REGION, SECRET, MotoS3
from tests.support.workers import WorkerFactory, wait_for
from workers import logs

ESC = "\x1b[2J\x1b[31m"  # clear the screen, then red
KEY_ID = "AKIAFARMWIRELOGTEST7"  # distinctive, so finding it in a log means it leaked


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """Everything logged in this process at DEBUG, with the logging state put back after."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    root = logging.getLogger()
    level, factory, installed = root.level, logging.getLogRecordFactory(), logs._installed
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield out
    root.removeHandler(handler)
    root.setLevel(level)
    logging.setLogRecordFactory(factory)
    logs._installed = installed
    for name in logs.WIRE_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)


def s3_env(moto: MotoS3, bucket: str) -> dict[str, str]:
    return {"FARM_STORAGE_URL": f"s3://{bucket}/media", "FARM_S3_ENDPOINT_URL": moto.endpoint,
            "FARM_S3_REGION": REGION, "FARM_S3_ACCESS_KEY_ID": KEY_ID,
            "FARM_S3_SECRET_ACCESS_KEY": SECRET}


def put_through_store(s: Settings) -> None:
    open_store(s).put(f"originals/{s.wire_log}.jpg", b"not really a jpeg",
                      content_type="image/jpeg")


def test_wire_logging_is_held_at_info_unless_asked(
        moto_s3: MotoS3, s3_bucket: str, captured: io.StringIO) -> None:
    s = moto_s3.settings(s3_bucket, FARM_S3_ACCESS_KEY_ID=KEY_ID, FARM_LOG_LEVEL="DEBUG")
    logs.hold_wire_loggers(s)
    put_through_store(s)
    held = captured.getvalue()
    assert KEY_ID not in held and "Authorization" not in held and "Signature" not in held
    assert all(logging.getLogger(name).getEffectiveLevel() == logging.INFO
               for name in logs.WIRE_LOGGERS)

    # FARM_WIRE_LOG=1 lets botocore through: proof that the put above would have leaked.
    for name in logs.WIRE_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)
    logs.hold_wire_loggers(replace(s, wire_log=True))
    put_through_store(replace(s, wire_log=True))
    assert KEY_ID in captured.getvalue()[len(held):]


@pytest.mark.integration
def test_a_debug_worker_log_holds_no_s3_credentials(
        moto_s3: MotoS3, s3_bucket: str, data: redis.Redis, workers: WorkerFactory,
        monkeypatch: pytest.MonkeyPatch) -> None:
    env = {**s3_env(moto_s3, s3_bucket), "FARM_LOG_LEVEL": "DEBUG"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    try:
        worker = workers("cpu", env=env)
        open_store(get_settings()).put("originals/77.jpg", corpus.oriented_jpeg(1),
                                       content_type="image/jpeg")
        enqueue.photo_uploaded(77, 7, "originals/77.jpg")
        records = PhotoRecords(data, get_settings())
        wait_for(lambda: (r := records.get(77)) and r.status == "ready", timeout=60,
                 what="photo 77 ready")
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    log = worker.log()
    assert "DEBUG/" in log  # the worker really logged at DEBUG...
    assert KEY_ID not in log and "Authorization" not in log and "Signature" not in log


def test_records_are_escaped_with_tracebacks_kept_readable(captured: io.StringIO) -> None:
    logs._installed = False  # installed afresh, whatever an earlier in-process `farm` did
    logs.escape_records()
    log = logging.getLogger("farm.test")
    log.warning("keyword %s and a forged\nline", f"k{ESC}")
    try:
        try:
            raise KeyError(f"inner{ESC}")
        except KeyError as exc:
            raise ValueError("outer\n[2026-01-01 INFO] forged") from exc
    except ValueError:
        log.exception("failed: %r", {"k": 1})
    text = captured.getvalue()
    assert "\x1b" not in text
    assert "keyword k\\x1b[2J\\x1b[31m and a forged\\nline\n" in text
    assert "ValueError: outer\\n[2026-01-01 INFO] forged\n" in text
    assert "KeyError: 'inner\\x1b[2J\\x1b[31m'" in text
    # the traceback keeps its lines, and plain records stay as they were made
    assert "Traceback (most recent call last):\n  File " in text
    assert "direct cause of the following exception:\n\nTraceback" in text
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "plain %s", ("args",), None)
    logs.escape_record(record)
    assert (record.msg, record.args) == ("plain %s", ("args",))


@pytest.mark.integration
def test_hostile_text_in_a_message_reaches_a_worker_log_escaped(
        data: redis.Redis, workers: WorkerFactory) -> None:
    worker = workers("feed")
    strict, app.strict_arg_bytes = app.strict_arg_bytes, None  # a real producer has no check
    try:
        # a keyword name and an argument, each quoted by the error that refuses it, logged
        # by the task base and by Celery with its traceback
        app.send_task("feeds.rebuild", args=[5], kwargs={f"who{ESC}\nforged": 1}, queue="feeds",
                      task_id="hostile-kwarg")
        app.send_task("diag.flaky", args=[f"mark{ESC}\n[2026-01-01 INFO] forged", 1, "bug"],
                      queue="feeds", task_id="hostile-text")
    finally:
        app.strict_arg_bytes = strict
    store = DeadLetterStore(data, get_settings())
    wait_for(lambda: store.get("hostile-kwarg") and store.get("hostile-text"), timeout=30,
             what="both messages dead-lettered")
    wait_for(lambda: worker.log().count("raised unexpected") == 2, what="Celery's error lines")
    log = worker.log()
    assert "\x1b" not in log
    assert "who\\x1b[2J\\x1b[31m" in log and "mark\\x1b[2J\\x1b[31m" in log, log[-3000:]
    assert "\nforged" not in log and "\n[2026-01-01 INFO] forged" not in log


def test_every_farm_command_escapes_its_records(data: redis.Redis,
                                                captured: io.StringIO) -> None:
    from workers.cli import main as farm

    logs._installed = False
    logging.setLogRecordFactory(logging.LogRecord)
    assert farm(["deadletter", "list"]) == 0
    logging.getLogger("farm.test").warning("stored %s", ESC)
    assert "stored \\x1b[2J" in captured.getvalue()
    # ...while wire logging is left to the commands that set logging up (worker, beat), so an
    # in-process call changes no logger's level
    assert logging.getLogger("urllib3").level == logging.NOTSET

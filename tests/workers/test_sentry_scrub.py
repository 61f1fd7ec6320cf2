"""What workers/sentry.py takes out of an event before it leaves, checked on events built by
hand (no SDK set up in the test process): secrets wherever they sit, task arguments other than
ids, query strings; and which events it drops as second reports."""

from __future__ import annotations

import logging
from typing import Any

from billiard.exceptions import WorkerLostError

from config.settings import load_settings
from workers import sentry

SECRET_ENV = {
    "FARM_S3_SECRET_ACCESS_KEY": "s3-secret-value-1234",
    "FARM_TOKEN_KEYS": "newkeyAAAAAAAAAAAAAAA=,oldkeyBBBBBBBBBBBBBBB=",
    "FARM_FLOWER_PASSWORD": "flower-pw-99",
    "FARM_BROKER_URL": "redis://:broker-pass-77@10.0.0.5:6379/0",
    "FARM_KEY_PREFIX": "farm",  # not a secret, though its name has KEY in it
    "FARM_ENV_FILE": "/dev/null",
}
OTHER_ENV = {"AWS_SECRET_ACCESS_KEY": "aws-secret-from-env", "HOME": "/home/farm",
             "DATABASE_URL": "postgres://app:db-pass-31@db/app",
             "GITHUB_TOKEN": "ab"}  # too short to scrub without garbling everything


def secrets() -> list[str]:
    return sentry.secrets_of(load_settings(SECRET_ENV), {**SECRET_ENV, **OTHER_ENV})


def test_the_secrets_are_the_settings_marked_secret_url_passwords_and_secret_env_values() -> None:
    found = set(secrets())
    assert {"s3-secret-value-1234", "newkeyAAAAAAAAAAAAAAA=", "oldkeyBBBBBBBBBBBBBBB=",
            "flower-pw-99", "broker-pass-77", "aws-secret-from-env", "db-pass-31"} <= found
    assert not {"farm", "/home/farm", "ab", "/dev/null"} & found


def test_every_secret_is_filtered_wherever_it_sits_in_an_event() -> None:
    redact = sentry.Redactor(secrets(), boundaries=False)
    event: dict[str, Any] = {
        "exception": {"values": [{"type": "S3Error", "value": "denied for s3-secret-value-1234"}]},
        "logentry": {"message": "login %s", "params": ["flower-pw-99", 3]},
        "breadcrumbs": {"values": [{"message": "connect redis://:broker-pass-77@10.0.0.5"}]},
        "extra": {"keys": ("oldkeyBBBBBBBBBBBBBBB=",), "env": "aws-secret-from-env"},
        "tags": {"task": "photos.process"},
    }
    text = repr(redact.walk(event))
    assert not [s for s in secrets() if s in text]
    assert event["exception"]["values"][0]["value"] == "denied for [Filtered]"
    assert event["logentry"]["params"] == ["[Filtered]", 3]
    assert event["tags"] == {"task": "photos.process"}


def test_ids_become_tags_and_every_other_argument_is_filtered_as_whole_words() -> None:
    named = {"photo_id": 7, "owner_id": 42, "event_id": "ev-1", "notification_id": "a b",
             "is_id": True, "caption": "hello sk_live_123456 " * 10, "network": "twitter",
             "marker": "secret", "share_to": ["abc", "facebook"], "data": {"k": "nested-value"},
             "kind": "not-a-kind", "lo": 3}
    assert sentry.id_tags(named) == {"photo_id": "7", "owner_id": "42", "event_id": "ev-1",
                                     "network": "twitter"}  # a choice from a closed list
    values = sentry.arg_values(named)
    assert "ev-1" not in values and "twitter" not in values
    assert {"a b", "nested-value", "not-a-kind", "facebook"} <= set(values)
    redact = sentry.Redactor(values, boundaries=True)
    assert redact.text("marker secret: secrets, SecretError, nonsecret") == (
        "marker [Filtered]: secrets, SecretError, nonsecret")
    # a long value (a caption) quoted clipped is filtered from its start to the end
    clipped = named["caption"][:100]
    assert redact.text(f"refused: {clipped}") == "refused: [Filtered]"
    assert redact.text("abc is short") == "abc is short"  # under 6 characters: kept


def record(msg: str, *args: Any, name: str = "farm.task") -> logging.LogRecord:
    return logging.LogRecord(name, logging.ERROR, __file__, 1, msg, args, None)


def test_second_reports_are_dropped_and_first_ones_kept() -> None:
    line = "task=%s id=%s deadletter reason=%s attempts=%d error=%s"
    raised = record(line, "photos.process", "abc", "permanent", 1, "PermanentError: x")
    redelivered = record(line, "diag.flaky", "abc", "redelivered", 4, "WorkerLost: died")
    other = record("task=x id=y deadletter reason=permanent", name="someone.else")
    event: dict[str, Any] = {"extra": {"celery-job": {"task_name": "t", "args": [1],
                                                      "kwargs": {"caption": "c"}}}}
    assert sentry.before_send({}, {"log_record": raised}) is None  # the exception says it
    assert sentry.before_send(event, {"log_record": redelivered}) is event  # the only report
    assert event["extra"]["celery-job"] == {"task_name": "t"}
    assert sentry.before_send({}, {"log_record": other}) == {}
    try:
        raise WorkerLostError("Worker exited prematurely: exitcode 70")
    except WorkerLostError as exc:
        lost = (WorkerLostError, RuntimeError("wrapped as billiard does"), exc.__traceback__)
    assert sentry.before_send({}, {"exc_info": lost}) is None  # the "exited with" line says it


def test_outgoing_request_breadcrumbs_lose_their_query_and_credentials() -> None:
    crumb: dict[str, Any] = {"type": "http", "data": {
        "url": "https://user:pw@hooks.example:8443/cb?token=abc#frag", "http.method": "POST"}}
    out = sentry.before_breadcrumb(crumb, {})  # type: ignore[arg-type]
    assert out is not None and out["data"]["url"] == "https://hooks.example:8443/cb"

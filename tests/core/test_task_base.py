"""The task base's policy as plain logic: classification, phases, the dead-letter record."""

from __future__ import annotations

import time

import botocore.exceptions
import pytest
import redis

from config.settings import get_settings
from tasks.core import timing
from tasks.core.base import FarmTask
from tasks.core.deadletter import DeadLetterStore
from tasks.core.errors import PermanentError, TransientError
from tasks.diagnostics.tasks import flaky as flaky_task


class Throttled(Exception):
    pass


class BadInput(Throttled):
    """A subclass of a transient error that is declared permanent: permanent wins."""


class Probe(FarmTask):
    """A task class declared like farm_task declares one, not registered with the app."""

    name = "probe"
    transient = (Throttled,)
    permanent = (BadInput,)


def test_classification_follows_the_declaration() -> None:
    task = Probe()
    assert task.classify(TransientError("x")) == "transient"
    assert task.classify(Throttled()) == "transient"
    assert task.classify(redis.ConnectionError()) == "transient"
    assert task.classify(BadInput()) == "permanent"
    assert task.classify(PermanentError("x")) == "permanent"
    assert task.classify(KeyError("bug")) == "error"
    assert task.classify(botocore.exceptions.ClientError({}, "op")) == "error"


def test_phases_are_timed_inside_a_task_only() -> None:
    with timing.phase("outside"):
        pass  # no task: nothing collected, nothing raised
    with timing.collect() as phases:
        with timing.phase("fetch"):
            time.sleep(0.01)
        with timing.phase("fetch"):
            pass
    assert list(phases) == ["fetch"] and phases["fetch"] >= 10
    assert timing.format_phases({"fetch": 3.4, "thumb": 48.0}) == "fetch=3ms thumb=48ms"


def test_a_plain_call_runs_the_function_without_the_policy(data: redis.Redis) -> None:
    data.delete("farm:diag:plain:runs")
    with pytest.raises(PermanentError):  # the error reaches the caller, untouched
        flaky_task("plain", fail_times=1, mode="permanent")
    assert DeadLetterStore(data, get_settings()).count() == 0  # plain calls are not recorded


def test_a_process_exiting_under_a_task_is_not_dead_lettered(
        data: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    # A child SIGTERMed when the broker connection is lost, or a warm shutdown cutting a task
    # short, raises SystemExit inside it: the message is redelivered, so a dead letter would make
    # it run twice. It passes through, unrecorded.
    from config.celery_app import app
    from tasks.diagnostics import synthetic

    def exiting(*_: object) -> int:
        raise SystemExit(1)

    monkeypatch.setattr(synthetic, "flaky", exiting)
    with pytest.raises(SystemExit):
        app.tasks["diag.flaky"].apply(args=["gone", 0])
    assert DeadLetterStore(data, get_settings()).count() == 0
    assert data.hget("farm:metrics:tasks", "diag.flaky:interrupted") == "1"


def test_a_dead_letter_that_cannot_be_written_leaves_the_message_with_the_broker(
        data: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    # The data Redis down (a failover) as a task fails for good: with no record to replay it
    # from, acking the message would lose the task. It is requeued instead.
    from celery.exceptions import Reject

    from config.celery_app import app
    from tasks.diagnostics import synthetic

    def failing(*_: object) -> int:
        raise PermanentError("no good")

    def unwritable(*_: object, **__: object) -> None:
        raise redis.ConnectionError("data Redis down")

    monkeypatch.setattr(synthetic, "flaky", failing)
    monkeypatch.setattr(DeadLetterStore, "record", unwritable)
    result = app.tasks["diag.flaky"].apply(args=["unwritten", 1])
    assert isinstance(result.result, Reject) and result.result.requeue, result.state
    assert DeadLetterStore(data, get_settings()).count() == 0

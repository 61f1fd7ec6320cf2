"""Property-based (hypothesis): whatever arrives, every outcome is the task's result or a clear
refusal, never an unhandled crash, never a hang.

- Task entry: every task name in config/queues.py, with arguments and keyword arguments of any
  JSON shape (often under the task's own parameter names), through Celery's eager apply and the
  farm's task base. The task's own code is replaced by a stub: what is under test is the entry
  (the size limit, the checkers, the dead letter, the capped error), not feeds or APNs.
- Message decoding: arbitrary bodies (JSON of any shape, junk bytes, other content types) and
  headers (Celery's own names with values of any JSON type) through the consumer's screen
  (workers/consumer.py) and then, if it lets the message through, Celery's own request setup and
  execution, in-process.
"""

from __future__ import annotations

import importlib
import inspect
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery.exceptions import InvalidTaskError
from celery.worker.request import Request
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kombu.message import Message
from kombu.serialization import prepare_accept_content

from config.celery_app import TASK_MODULES, app
from config.queues import ROUTES
from config.settings import get_settings
from tasks.core.base import MAX_ERROR_CHARS, FarmTask
from tasks.core.deadletter import DeadLetterStore
from tasks.core.validation import MESSAGES, InvalidArgument
from workers.consumer import MAX_REPR, BadMessage, screen

for _module in TASK_MODULES:
    importlib.import_module(_module)

RAN = "ran"
NAMES = sorted(ROUTES)
FUZZ = settings(max_examples=800, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

scalars = (st.none() | st.booleans() | st.integers() | st.integers(-2**64, 2**64)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20)
           | st.sampled_from(["", "twitter", "like", "originals/1.jpg", "e1", "\x1b[2J", "\ud800",
                              "x" * 3000]))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                           max_leaves=12)


@pytest.fixture(scope="module")
def stubs() -> Iterator[None]:
    """Every farm task's function replaced by one that returns RAN, signature kept."""
    saved: dict[str, Any] = {}
    for name in NAMES:
        task: FarmTask[Any, Any] = app.tasks[name]
        original = task.run
        saved[name] = task.__dict__.get("run")

        def run(*_: Any, **__: Any) -> str:
            return RAN

        run.__signature__ = inspect.signature(original)  # type: ignore[attr-defined]
        task.run = run  # type: ignore[method-assign]
    yield
    for name, original in saved.items():
        task = app.tasks[name]
        if original is None:
            del task.run
        else:
            task.run = original


@st.composite
def arguments(draw: st.DrawFn) -> tuple[str, list[Any], dict[str, Any]]:
    name = draw(st.sampled_from(NAMES))
    params = list(inspect.signature(MESSAGES[name]).parameters)
    args = draw(st.lists(json_values, max_size=len(params) + 1))
    keys = st.sampled_from(params) | st.text(max_size=8) if params else st.text(max_size=8)
    kwargs = draw(st.dictionaries(keys, json_values, max_size=len(params) + 1))
    # What arrives is what JSON carries: round-trip it (tuples become lists, and so on).
    args, kwargs = json.loads(json.dumps([args, kwargs]))
    return name, args, kwargs


@FUZZ
@given(case=arguments())
def test_task_entry_runs_or_refuses_clearly_whatever_the_arguments(
        case: tuple[str, list[Any], dict[str, Any]], data: redis.Redis, stubs: None) -> None:
    name, args, kwargs = case
    task_id = uuid.uuid4().hex
    result = app.tasks[name].apply(args=args, kwargs=kwargs, task_id=task_id)
    if result.successful():
        assert result.result == RAN
        return
    exc = result.result
    assert isinstance(exc, InvalidArgument), (name, args, kwargs, repr(exc))
    assert len(str(exc)) <= MAX_ERROR_CHARS
    entry = DeadLetterStore(data, get_settings()).get(task_id)
    assert entry is not None and entry.reason == "permanent"
    assert entry.error.startswith("InvalidArgument: ") and "\n" not in entry.error
    assert len(entry.error) <= MAX_ERROR_CHARS and len(entry.to_json()) < 80 * 1024


CELERY_HEADERS = ["lang", "task", "id", "shadow", "eta", "expires", "group", "group_index",
                  "retries", "timelimit", "root_id", "parent_id", "argsrepr", "kwargsrepr",
                  "origin", "ignore_result", "replaced_task_nesting", "stamped_headers",
                  "stamps", "farm_replays"]
EMBED_KEYS = ["callbacks", "errbacks", "chain", "chord"]  # and some Celery would copy over:
EMBED_ODD = ["retries", "id", "is_eager", "delivery_info"]


@st.composite
def messages(draw: st.DrawFn) -> Message:
    headers: dict[str, Any] = draw(st.dictionaries(st.sampled_from(CELERY_HEADERS), json_values,
                                                   max_size=6))
    if draw(st.booleans()):  # usually a well-formed core, so the fuzz reaches deeper
        headers["task"] = draw(st.sampled_from([*NAMES, "no.such.task"]))
        headers["id"] = uuid.uuid4().hex
    shape = draw(st.sampled_from(["proto2", "json", "junk"]))
    content_type = "application/json"
    if shape == "proto2":
        embed = draw(st.none()
                     | st.dictionaries(st.sampled_from(EMBED_KEYS + EMBED_ODD), json_values)
                     | st.just(dict.fromkeys(EMBED_KEYS)))
        body = json.dumps([draw(st.lists(json_values, max_size=5)),
                           draw(st.dictionaries(st.text(max_size=8), json_values, max_size=4)),
                           embed]).encode()
    elif shape == "json":
        body = json.dumps(draw(json_values)).encode()
    else:
        body = draw(st.binary(max_size=64))
        content_type = draw(st.sampled_from(["application/json", "application/x-python-serialize",
                                             "text/plain", "application/x-yaml"]))
    return Message(body=body, content_type=content_type, content_encoding="utf-8",
                   headers=headers, delivery_info={"exchange": "farm", "routing_key": "feeds"},
                   properties={"delivery_tag": uuid.uuid4().hex},
                   accept=prepare_accept_content(["json"]))


@FUZZ
@given(message=messages())
def test_any_message_is_screened_out_or_runs_through_celery_without_crashing(
        message: Message, data: redis.Redis, stubs: None) -> None:
    try:
        screen(message)
    except BadMessage as bad:
        assert "\n" not in bad.error and len(bad.error) < 1000
        return
    headers = message.headers
    if "task" not in headers or headers["task"] not in app.tasks:
        return  # no task header (Celery's unknown-message path) or an unknown task: refused
    try:
        request = Request(message, app=app, task=app.tasks[headers["task"]], hostname="fuzz@x")
    except InvalidTaskError:  # a bad eta/expires: Celery's on_invalid_task, a dead letter here
        return
    assert len(request.argsrepr) <= 4 * MAX_REPR and len(request.kwargsrepr) <= 4 * MAX_REPR
    request.execute()  # runs the entry and the stub; any escaping exception fails the property

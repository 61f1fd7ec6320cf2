"""What one message can make the farm print or write: escaped (tasks/core/text.py) and capped
(the task base, the dead-letter record). In-process: the task entry runs through Celery's eager
apply with the task's own code replaced, so nothing but the entry is under test."""

from __future__ import annotations

import importlib
import inspect
import json
import logging
from collections.abc import Callable
from typing import Any

import pytest
import redis

from config.celery_app import TASK_MODULES, app
from config.settings import get_settings
from tasks.core.base import MAX_ERROR_CHARS, FarmTask
from tasks.core.deadletter import DeadLetter, DeadLetterStore, NotReplayable
from tasks.core.text import clip, printable
from tasks.core.validation import MAX_MESSAGE_BYTES, InvalidArgument, check

for _module in TASK_MODULES:
    importlib.import_module(_module)


def replace_run(monkeypatch: pytest.MonkeyPatch, name: str,
                body: Callable[..., Any]) -> FarmTask[Any, Any]:
    """The task ``name`` with its function replaced by ``body``, signature kept (the dead-letter
    hook names arguments by it)."""
    task: FarmTask[Any, Any] = app.tasks[name]
    signature = inspect.signature(task.run)

    def run(*args: Any, **kwargs: Any) -> Any:
        return body(*args, **kwargs)

    run.__signature__ = signature  # type: ignore[attr-defined]
    monkeypatch.setattr(task, "run", run)
    return task


# --- printable and clip ---------------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "shown"), [
    ("plain text, é, 中文, 🙂", "plain text, é, 中文, 🙂"),
    ("k\x1b[2J\x1b[31mred", "k\\x1b[2J\\x1b[31mred"),  # terminal escape sequences
    ("a\nb\r\tc", "a\\nb\\r\\tc"),  # forged log lines
    ("\x07\x7f\x9b", "\\x07\\x7f\\x9b"),  # BEL, DEL, the 8-bit CSI
    ("abc\u202edcba\u2066", "abc\\u202edcba\\u2066"),  # bidi override and isolate
    ("zero\u200bwidth\u2028", "zero\\u200bwidth\\u2028"),
    ("lone \ud800 surrogate", "lone \\ud800 surrogate"),  # would not even encode to UTF-8
    ("nbsp\u00a0ok", "nbsp\u00a0ok"),
])
def test_printable_escapes_what_a_terminal_would_act_on_and_keeps_the_rest(
        raw: str, shown: str) -> None:
    assert printable(raw) == shown
    assert printable(raw).encode("utf-8")  # always printable to a UTF-8 terminal


def test_printable_multiline_keeps_lines_and_tabs_only() -> None:
    assert printable("Traceback:\n\tline\x1b]0;title\x07", multiline=True) == \
        "Traceback:\n\tline\\x1b]0;title\\x07"


def test_clip_caps_and_says_how_much_was_left_off() -> None:
    assert clip("short", 10) == "short"
    for n in (31, 100, 5_000_000):
        text = clip("x" * n, 30)
        assert len(text) == 30 and text.endswith(f"[{n - text.index('.'):,} more chars]")


# --- the record --------------------------------------------------------------------------------

OLD_RECORD = {"id": "t1", "task": "push.notify", "queue": "push", "args": [[1]], "kwargs": {},
              "reason": "permanent", "error": "E: x", "traceback": "", "attempts": 1,
              "failed_at": 1.0, "replays": 0}


def test_records_written_before_message_bodies_existed_still_load_and_replay(
        data: redis.Redis) -> None:
    store = DeadLetterStore(data, get_settings())
    data.hset(store.items, "t1", json.dumps(OLD_RECORD))
    data.zadd(store.index, {"t1": 1.0})
    entry = store.get("t1")
    assert entry is not None and (entry.body, entry.size, entry.replayable) == ("", 0, True)
    # and a newer version's extra field does not stop this one reading the record
    assert DeadLetter.from_json(json.dumps({**OLD_RECORD, "later": 1})).id == "t1"
    sent: list[tuple[str, Any]] = []

    class Sent:
        id = "new"

    def send(name: str, **options: Any) -> Sent:
        sent.append((name, options["args"]))
        return Sent()

    assert store.replay("t1", send) == "new" and sent == [("push.notify", [[1]])]


def test_a_message_that_never_ran_is_refused_replay_and_kept(data: redis.Redis) -> None:
    store = DeadLetterStore(data, get_settings())
    store.record(DeadLetter(id="m1", task="no.such", queue="feeds", args=[], kwargs={},
                            reason="unknown task", error="NotRegistered", traceback="",
                            attempts=1, body="[[], {}, {}]", size=12))
    with pytest.raises(NotReplayable, match="never ran"):
        store.replay("m1", lambda *a, **k: pytest.fail("sent"))
    assert store.get("m1") is not None


def test_a_record_caps_its_error_traceback_and_body() -> None:
    entry = DeadLetter(id="x", task="t", queue="q", args=[], kwargs={}, reason="error",
                       error="E: " + "e" * 100_000, traceback="frame\n" * 100_000, attempts=1,
                       body="b" * 1_000_000, size=1_000_000)
    assert len(entry.to_json()) < 100 * 1024
    assert entry.traceback.endswith("frame\n")  # the end is what says what went wrong


# --- the task entry ------------------------------------------------------------------------------

def test_arguments_over_the_message_limit_are_refused_at_entry_and_not_stored(
        data: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    """The finding, in-process: one 5 MB argument sent by name."""
    ran: list[Any] = []
    hooked: list[tuple[dict[str, Any], str, str]] = []
    task = replace_run(monkeypatch, "feeds.activity", lambda **kw: ran.append(kw))
    monkeypatch.setattr(task, "on_dead_letter", lambda *a: hooked.append(a))
    huge = "x" * 5_000_000
    result = task.apply(args=[1, huge, 2, "e"], task_id="huge-1")

    assert isinstance(result.result, InvalidArgument) and not ran
    assert len(str(result.result)) < 300 and "5,000,0" in str(result.result)
    entry = DeadLetterStore(data, get_settings()).get("huge-1")
    assert entry is not None and entry.reason == "permanent" and not entry.replayable
    assert (entry.args, entry.kwargs, entry.size) == ([], {}, len(json.dumps(
        [[1, huge, 2, "e"], {}], separators=(",", ":"))))
    assert len(entry.to_json()) < 4096 and entry.body.startswith("[[1, 'xxx")
    # the hook (a photo's record marked failed) still gets the arguments by name
    assert hooked and hooked[0][0]["user_id"] == 1 and hooked[0][1] == "permanent"


def test_the_web_tier_refuses_what_the_worker_would() -> None:
    with pytest.raises(InvalidArgument, match="over the 65,536-byte limit"):
        check("feeds.activity", [1, "x" * MAX_MESSAGE_BYTES, 2, "e"])


def test_an_error_quoting_megabytes_is_cut_everywhere_celery_sends_it(
        data: redis.Redis, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A task's own error that quotes a huge value: the dead letter, the log lines and the
    exception Celery puts in its task-failed event and Flower (the one raised) are all small."""
    def fails(**_: Any) -> None:
        try:
            raise KeyError("k" * 3_000_000)
        except KeyError as exc:
            raise ValueError("v" * 5_000_000) from exc

    task = replace_run(monkeypatch, "feeds.rebuild", fails)
    with caplog.at_level(logging.INFO):
        result = task.apply(args=[7], task_id="loud-1")
    exc = result.result
    assert isinstance(exc, ValueError) and len(str(exc)) <= MAX_ERROR_CHARS
    assert len(str(exc.__cause__)) <= MAX_ERROR_CHARS
    assert len(result.traceback or "") < 8192
    entry = DeadLetterStore(data, get_settings()).get("loud-1")
    assert entry is not None and entry.reason == "error" and entry.args == [7]
    assert len(entry.error) <= MAX_ERROR_CHARS and len(entry.to_json()) < 8192
    assert sum(len(r.getMessage()) for r in caplog.records) < 16 * 1024


def test_an_error_whose_own_str_stays_long_is_raised_as_one_short_line(
        data: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    class Loud(Exception):
        def __str__(self) -> str:
            return "\x1b[2J" + "y" * 1_000_000

    def fails(**_: Any) -> None:
        raise Loud()

    task = replace_run(monkeypatch, "feeds.rebuild", fails)
    exc = task.apply(args=[8], task_id="loud-2").result
    assert type(exc).__name__ == "TaskFailed" and len(str(exc)) <= MAX_ERROR_CHARS
    assert str(exc).startswith("Loud: \\x1b[2J")
    entry = DeadLetterStore(data, get_settings()).get("loud-2")
    assert entry is not None and "\x1b" not in entry.error

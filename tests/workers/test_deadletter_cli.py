"""`farm deadletter` and `farm stats` over records holding what hostile messages carry: nothing
from a record reaches the terminal raw, messages that never ran are counted, listed and refused
replay in one line, and what reliable fetch set aside is adopted into the store."""

from __future__ import annotations

import json

import pytest
import redis

from config.reliable_redis import UNPARSABLE
from config.settings import get_settings
from tasks.core.deadletter import DeadLetter, DeadLetterStore
from workers.cli import main as farm

ESC = "\x1b[2J\x1b]0;owned\x07"  # clear screen, set the terminal's title


@pytest.fixture
def store(data: redis.Redis, broker: redis.Redis) -> DeadLetterStore:
    s = DeadLetterStore(data, get_settings())
    s.record(DeadLetter(id="m1", task=f"no.such{ESC}", queue="feeds", args=[], kwargs={},
                        reason="unknown task", error=f"NotRegistered: no.such{ESC}",
                        traceback="", attempts=1, body=f'[[1], {{"k{ESC}": 1}}, {{}}]', size=30))
    s.record(DeadLetter(id="t1", task="feeds.activity", queue="feeds", args=[1],
                        kwargs={f"k{ESC}": 2}, reason="permanent",
                        error=f"InvalidArgument: k{ESC}\u202e", attempts=1,
                        traceback=f"Traceback\n  line {ESC}\nInvalidArgument: k"))
    broker.lpush(UNPARSABLE, b"garbage\x00\xff" + ESC.encode())
    return s


def test_list_show_and_stats_escape_what_records_hold(
        store: DeadLetterStore, broker: redis.Redis, data: redis.Redis,
        capsys: pytest.CaptureFixture[str]) -> None:
    assert farm(["deadletter", "list"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out
    assert "no.such\\x1b[2J\\x1b]0;owned\\x07" in out and "\\u202e" in out
    assert "unparsable-" in out and "3 dead-lettered" in out
    assert broker.llen(UNPARSABLE) == 0  # adopted: the store holds it now

    for entry_id in ("m1", "t1"):
        assert farm(["deadletter", "show", entry_id]) == 0
        shown = capsys.readouterr().out
        assert "\x1b" not in shown and "\x07" not in shown, shown
    assert "Traceback\n  line \\x1b[2J" in shown  # lines kept, escapes escaped

    assert farm(["deadletter", "list", "--json"]) == 0  # JSON escapes them itself
    lines = capsys.readouterr().out.splitlines()
    assert "\x1b" not in "".join(lines)
    assert {json.loads(line)["id"] for line in lines} >= {"m1", "t1"}

    assert farm(["stats"]) == 0
    stats = capsys.readouterr().out
    assert "dead letters: 3" in stats and "messages.undecodable: 1" in stats


def test_replay_refuses_a_message_that_never_ran_in_one_line_and_keeps_it(
        store: DeadLetterStore, capsys: pytest.CaptureFixture[str]) -> None:
    assert farm(["deadletter", "replay", "m1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "never ran (unknown task)" in err and "\x1b" not in err
    assert store.get("m1") is not None
    # --all replays what it can and leaves the rest, each refusal one line
    assert farm(["deadletter", "replay", "--all"]) == 0
    out, err = capsys.readouterr()
    assert "replayed t1" in out and err.count("not replayed") == 2
    assert store.get("t1") is None and store.get("m1") is not None

"""The chaos suite, short (`python -m tests.chaos --short`), in `make test`: a few seconds of
seeded kills against real workers and a broker with AOF, then the end state checked. The modes
that matter most: worker parents SIGKILLed (and whole nodes), warm stops as on deploy, and
pushes with io workers killed against the APNs stand-in; and worker parents SIGKILLed again on
RabbitMQ (a vhost of the mode's own on the machine's server; skipped, saying why, without one).

Each mode runs in its own process with its own servers (as `make chaos` runs it); nothing here
waits on time, only on conditions with generous deadlines, and every check is of the end state.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.__main__ import details, mode_line, run_one
from tests.chaos.rabbit import unavailable

pytestmark = pytest.mark.integration

SEED = 7


def run(mode: str, tmp_path: Path, broker: str = "redis") -> dict[str, Any]:
    opts = argparse.Namespace(short=True, seed=SEED, keep=False, broker=broker)
    result = run_one(mode, opts, tmp_path)
    print(mode_line(result))  # shown with -s, and in the report when it fails
    for line in details(result):
        print(line)
    return result


def explain(result: dict[str, Any]) -> str:
    return "\n".join([mode_line(result), *details(result)])


NO_RABBITMQ = unavailable()  # why the amqp run cannot be made here, or None
ON_RABBITMQ = pytest.param(
    "fanout-parents", "amqp", id="fanout-parents-amqp", marks=pytest.mark.skipif(
    NO_RABBITMQ is not None, reason=f"chaos on RabbitMQ skipped: {NO_RABBITMQ}"))


@pytest.mark.parametrize(("mode", "broker"), [
    ("fanout-parents", "redis"), ("fanout-warm", "redis"), ON_RABBITMQ])
def test_fan_out_under_kills_leaves_every_entry_once_and_loses_no_task(
        mode: str, broker: str, tmp_path: Path) -> None:
    r = run(mode, tmp_path, broker)
    assert "error" not in r, explain(r)
    assert sum(r["kills"].values()) > 0, "the killer never struck: " + explain(r)
    assert r["posts"] > 0 and r["entries_expected"] > r["posts"], explain(r)
    assert (r["missing"], r["duplicated"], r["extra"], r["posts_lists_wrong"]) == (0, 0, 0, 0), \
        explain(r)
    assert (r["tasks_lost"], r["pending"], r["ledger_left"], r["dead_letters_left"]) == \
        (0, 0, 0, 0), explain(r)
    assert r["tasks_sent"] > r["posts"] and not r["left"], explain(r)
    assert r["passed"], explain(r)


def test_pushes_under_io_kills_lose_none_and_duplicate_only_in_the_window(
        tmp_path: Path) -> None:
    r = run("push", tmp_path)
    assert "error" not in r, explain(r)
    assert sum(r["kills"].values()) > 0, "the killer never struck: " + explain(r)
    assert r["pushes_expected"] > r["notifications"] > 0, explain(r)
    assert (r["pushes_lost"], r["pushes_extra"], r["dups_unexplained"]) == (0, 0, 0), explain(r)
    assert (r["tasks_lost"], r["pending"], r["dead_letters_left"]) == (0, 0, 0), explain(r)
    assert r["passed"], explain(r)

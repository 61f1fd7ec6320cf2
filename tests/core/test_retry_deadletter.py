"""Retry policy and dead-letter store, through real worker processes and the real broker."""

from __future__ import annotations

import itertools

import pytest
import redis

from config.celery_app import app
from config.settings import get_settings
from tasks.core import metrics
from tasks.core.deadletter import DeadLetterStore
from tests.support.workers import WorkerFactory, wait_for
from workers.cli import main as farm

pytestmark = pytest.mark.integration


def flaky(marker: str, fail_times: int, mode: str, **extra: object) -> str:
    return str(app.send_task("diag.flaky", kwargs={"marker": marker, "fail_times": fail_times,
                                                   "mode": mode, **extra}).id)


def runs(data: redis.Redis, marker: str) -> list[float]:
    return [float(t) for t in data.lrange(f"farm:diag:{marker}:runs", 0, -1)]


def store(data: redis.Redis) -> DeadLetterStore:
    return DeadLetterStore(data, get_settings())


def test_transient_errors_retry_with_backoff_then_succeed(
        data: redis.Redis, workers: WorkerFactory) -> None:
    workers("batch")
    flaky("t1", fail_times=2, mode="transient", retry_after=0.4)
    wait_for(lambda: data.get("farm:diag:t1:done"), what="flaky task to succeed")
    times = runs(data, "t1")
    assert len(times) == 3
    # Retry-After is a floor: each retry waited at least what the "server" asked for.
    assert all(b - a >= 0.4 for a, b in itertools.pairwise(times))
    # The counters are written as the task returns, a moment after its own effect.
    wait_for(lambda: data.hget("farm:metrics:tasks", "diag.flaky:ok"), what="counters")
    counts = metrics.read(data, get_settings())["diag.flaky"]
    assert (counts["retry"], counts["ok"], counts["deadletter"]) == (2, 1, 0)
    assert store(data).count() == 0


def test_retries_exhausted_land_in_the_dead_letter_store(
        data: redis.Redis, workers: WorkerFactory) -> None:
    workers("batch")
    task_id = flaky("t2", fail_times=99, mode="transient")
    entry = wait_for(lambda: store(data).get(task_id), what="dead letter")
    assert len(runs(data, "t2")) == 4  # FARM_RETRY_MAX=3 in the test session: 1 + 3 retries
    assert entry.task == "diag.flaky" and entry.queue == "maintenance"
    assert (entry.reason, entry.attempts) == ("exhausted", 4)
    assert entry.error == "TransientError: run 4 of t2 fails on purpose"
    assert entry.kwargs == {"marker": "t2", "fail_times": 99, "mode": "transient"}
    assert "tasks/diagnostics/synthetic.py" in entry.traceback


def test_rate_limit_waits_do_not_use_up_the_retries(
        data: redis.Redis, workers: WorkerFactory) -> None:
    """Six waits for quota, twice FARM_RETRY_MAX=3: the task still runs to the end, each wait at
    least what the limiter asked for, and nothing is dead-lettered."""
    workers("batch")
    flaky("rl", fail_times=6, mode="ratelimited", retry_after=0.1)
    wait_for(lambda: data.get("farm:diag:rl:done"), timeout=60, what="the waits to end")
    times = runs(data, "rl")
    assert len(times) == 7
    assert all(b - a >= 0.1 for a, b in itertools.pairwise(times))
    assert store(data).count() == 0


@pytest.mark.parametrize(("mode", "reason", "error"), [
    ("permanent", "permanent", "PermanentError: run 1 of {m} fails on purpose"),
    ("bug", "error", "RuntimeError: run 1 of {m} hits a bug on purpose"),
])
def test_permanent_errors_and_bugs_go_straight_to_dead_letter(
        mode: str, reason: str, error: str, data: redis.Redis, workers: WorkerFactory) -> None:
    workers("batch")
    marker = f"p-{mode}"
    task_id = flaky(marker, fail_times=1, mode=mode)
    entry = wait_for(lambda: store(data).get(task_id), what="dead letter")
    assert (entry.reason, entry.attempts, entry.error) == (reason, 1, error.format(m=marker))
    assert len(runs(data, marker)) == 1  # no retry at all


def test_replay_runs_the_task_again_and_clears_the_record(
        data: redis.Redis, workers: WorkerFactory, capsys: pytest.CaptureFixture[str]) -> None:
    workers("batch")
    task_id = flaky("r1", fail_times=1, mode="permanent")
    wait_for(lambda: store(data).get(task_id), what="dead letter")

    assert farm(["deadletter", "list"]) == 0
    listing = capsys.readouterr().out
    assert task_id in listing and "1 dead-lettered task(s)" in listing
    assert farm(["deadletter", "show", task_id]) == 0
    assert "PermanentError: run 1 of r1 fails on purpose" in capsys.readouterr().out

    assert farm(["deadletter", "replay", task_id]) == 0
    assert capsys.readouterr().out.startswith(f"replayed {task_id} as ")
    assert wait_for(lambda: data.get("farm:diag:r1:done"), what="replayed task") == "2"
    assert store(data).count() == 0
    assert farm(["deadletter", "show", task_id]) == 1


def test_replay_all_and_purge(data: redis.Redis, workers: WorkerFactory,
                              capsys: pytest.CaptureFixture[str]) -> None:
    workers("batch")
    ids = [flaky(f"ra{i}", fail_times=1, mode="permanent") for i in range(3)]
    wait_for(lambda: store(data).count() == 3, what="three dead letters")
    assert farm(["deadletter", "replay", "--all"]) == 0
    wait_for(lambda: all(data.get(f"farm:diag:ra{i}:done") for i in range(3)), what="replays")
    assert store(data).count() == 0

    more = [flaky(f"pu{i}", fail_times=1, mode="permanent") for i in range(2)]
    wait_for(lambda: store(data).count() == 2, what="two dead letters")
    assert farm(["deadletter", "purge", more[0]]) == 0
    assert store(data).ids() == [more[1]]
    assert farm(["deadletter", "purge"]) == 0
    assert "purged 1 record(s)" in capsys.readouterr().out.splitlines()[-1]
    assert store(data).count() == 0 and ids


def test_a_task_that_kills_its_process_is_capped_not_a_crash_loop(
        data: redis.Redis, workers: WorkerFactory) -> None:
    w = workers("batch", env={"FARM_MAX_DELIVERIES": "2"})
    task_id = flaky("c1", fail_times=99, mode="crash")
    entry = wait_for(lambda: store(data).get(task_id), timeout=30, what="redelivery cap")
    assert entry.reason == "redelivered"
    assert entry.error.startswith("WorkerLost: started 2 times and never finished")
    assert len(runs(data, "c1")) == 2
    assert w.alive()  # the pool replaced its child; the worker itself never went down
    flaky("c2", fail_times=0, mode="transient")
    wait_for(lambda: data.get("farm:diag:c2:done"), what="the worker to keep working")

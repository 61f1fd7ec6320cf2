"""The batch jobs' plain functions, `farm batch`, and batch.sweep on a real worker."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from conftest import WorkerFactory, wait_for

from config.celery_app import app
from config.settings import get_settings, replace
from schedules.batch import get_job, lock_key
from schedules.lock import RunLock
from tasks.deadletter import DeadLetter, DeadLetterStore
from tasks.maintenance import deadletter_report, sweep, ttl_rules
from workers.cli import main

ROOT = Path(__file__).resolve().parent.parent
DAY = 86400.0


def dead(entry_id: str, task: str, reason: str, error: str, failed_at: float) -> DeadLetter:
    return DeadLetter(id=entry_id, task=task, queue="q", args=[entry_id], kwargs={},
                      reason=reason, error=error, traceback="", attempts=1, failed_at=failed_at)


def seed_report_store(data: redis.Redis) -> DeadLetterStore:
    store = DeadLetterStore(data, get_settings())
    for entry in (
        dead("a", "photos.process", "permanent", "CorruptImage: bad header", 1000.0),
        dead("b", "photos.process", "exhausted", "TransientError: s3 down: 503", 2000.0),
        dead("c", "push.notify", "redelivered", "WorkerLost: started 3 times", 3000.0),
        dead("d", "push.notify", "permanent", "CorruptImage", 1500.0),
        dead("e", "photos.process", "permanent", "CorruptImage: truncated", 2500.0),
    ):
        store.record(entry)
    data.hset(store.items, "junk", "not json")
    return store


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int | None]] = []

    def __call__(self, step: str, done: int, total: int | None) -> None:
        self.calls.append((step, done, total))

    def finals(self) -> dict[str, tuple[int, int | None]]:
        """Each step's last report, in step order."""
        return {step: (done, total) for step, done, total in self.calls}


# --- dead-letter report ---------------------------------------------------------------------

def test_report_counts_a_seeded_store_exactly_and_keeps_the_latest(data: redis.Redis) -> None:
    seed_report_store(data)
    progress = Recorder()
    before = time.time()

    report = deadletter_report(data, get_settings(), progress)

    assert before <= report.pop("generated_at") <= time.time()
    assert report == {
        "total": 5,
        "by_task": {"photos.process": 3, "push.notify": 2},
        "by_reason": {"permanent": 3, "exhausted": 1, "redelivered": 1},
        "by_error": {"CorruptImage": 3, "TransientError": 1, "WorkerLost": 1},
        "oldest_at": 1000.0,
        "newest_at": 3000.0,
        "unreadable": 1,
    }
    stored = json.loads(data.get(get_settings().key("deadletter", "report")) or "{}")
    stored.pop("generated_at")
    assert stored == report
    assert progress.finals() == {"read": (6, 6)}


def test_report_of_an_empty_store(data: redis.Redis) -> None:
    report = deadletter_report(data, get_settings())
    assert (report["total"], report["by_task"], report["oldest_at"]) == (0, {}, None)


# --- sweep ----------------------------------------------------------------------------------

def test_sweep_purges_old_fixes_the_index_and_expires_ttl_less_counters(
        data: redis.Redis) -> None:
    s = get_settings()
    store = DeadLetterStore(data, s)
    now = time.time()
    old = now - (s.deadletter_retention_days + 1) * DAY
    store.record(dead("old", "push.notify", "permanent", "BadDeviceToken", old))
    store.record(dead("new", "push.notify", "permanent", "BadDeviceToken", now - DAY))
    data.zadd(store.index, {"ghost": now})  # index entry whose record is gone
    data.hset(store.items, "lost", dead("lost", "t", "permanent", "E", now - 60).to_json())
    data.hset(store.items, "lost-old", dead("lost-old", "t", "permanent", "E", old).to_json())
    bare, timed, other = (s.key("deliveries", "t1", 0), s.key("deliveries", "t2", 1),
                          s.key("diag", "marker"))
    data.set(bare, 1)
    data.set(timed, 1, ex=50)
    data.set(other, 1)
    progress = Recorder()

    result = sweep(data, s, progress)

    assert result == {"reindexed": 2, "index_orphans": 1, "purged": 2, "ttl_set": 1,
                      "keys_checked": 2}
    assert sorted(store.ids()) == ["lost", "new"]
    assert data.zscore(store.index, "lost") == pytest.approx(now - 60)
    assert sorted(data.hkeys(store.items)) == ["lost", "new"]
    _pattern, ttl = ttl_rules(s)[0]
    assert ttl - 5 < data.ttl(bare) <= ttl
    assert 0 < data.ttl(timed) <= 50  # an existing TTL is left as it was
    assert data.ttl(other) == -1  # only keys the rules name
    assert list(progress.finals()) == ["reindex", "orphans", "purge", "ttl"]
    assert all(done == total for done, total in progress.finals().values())

    again = sweep(data, s)
    assert again == {"reindexed": 0, "index_orphans": 0, "purged": 0, "ttl_set": 0,
                     "keys_checked": 2}


def test_sweep_matches_the_prefix_literally(data: redis.Redis) -> None:
    s = replace(get_settings(), key_prefix="f*rm")
    data.set("farm:deliveries:x:0", 1)
    data.set("f*rm:deliveries:y:0", 1)
    assert sweep(data, s)["ttl_set"] == 1
    assert data.ttl("farm:deliveries:x:0") == -1
    assert data.ttl("f*rm:deliveries:y:0") > 0


# --- farm batch -----------------------------------------------------------------------------

def test_cli_list_and_unknown_names(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["batch", "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:3] for line in lines] == [
        ["deadletter-report", "every", "1h"], ["sweep", "every", "15m"],
        ["feed-trim", "every", "1d"]]

    assert main(["batch", "nope"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["farm batch: unknown batch job 'nope'; "
                   "known: deadletter-report, sweep, feed-trim"]

    assert main(["batch"]) == 2
    assert "--list" in capsys.readouterr().err


def test_cli_runs_the_report_with_plain_progress_lines(
        data: redis.Redis, capsys: pytest.CaptureFixture[str]) -> None:
    seed_report_store(data)
    assert main(["batch", "deadletter-report"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:2] == ["deadletter-report: read 6/6", "deadletter-report: done"]
    assert "  total: 5" in out
    assert "  oldest_at: 1970-01-01 00:16:40 UTC" in out
    assert '  by_task: {"photos.process": 3, "push.notify": 2}' in out
    assert data.exists(get_settings().key("deadletter", "report"))


def test_cli_skips_while_another_run_holds_the_lock(
        data: redis.Redis, capsys: pytest.CaptureFixture[str]) -> None:
    s = get_settings()
    data.set(s.key("deliveries", "t", 0), 1)
    holder = RunLock(data, lock_key(s, get_job("sweep")), 60)
    assert holder.acquire()
    assert main(["batch", "sweep"]) == 0
    assert capsys.readouterr().out.splitlines() == ["sweep: skipped: already running"]
    assert data.ttl(s.key("deliveries", "t", 0)) == -1

    assert main(["batch", "sweep", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "skipped"


def _farm(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    kw.setdefault("text", True)
    return subprocess.run([sys.executable, "-m", "workers.cli", *args], cwd=ROOT,
                          env=os.environ.copy(), timeout=60, check=False,
                          **kw)  # type: ignore[call-overload, no-any-return]


def test_cli_without_a_terminal_prints_plain_lines_and_no_bar(data: redis.Redis) -> None:
    s = get_settings()
    data.set(s.key("deliveries", "t", 0), 1)
    proc = _farm("batch", "sweep", capture_output=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert proc.stdout.splitlines() == [
        "sweep: reindex 0/0", "sweep: orphans 0/0", "sweep: purge 0/0", "sweep: ttl 1/1",
        "sweep: done", "  reindexed: 0", "  index_orphans: 0", "  purged: 0", "  ttl_set: 1",
        "  keys_checked: 1",
    ]
    assert data.ttl(s.key("deliveries", "t", 0)) > 0

    unknown = _farm("batch", "nope", capture_output=True)
    assert unknown.returncode == 2
    assert len(unknown.stderr.splitlines()) == 1


def test_cli_on_a_terminal_draws_a_bar_on_stderr(data: redis.Redis) -> None:
    seed_report_store(data)
    master, slave = pty.openpty()
    try:
        proc = _farm("batch", "deadletter-report", stdout=slave, stderr=subprocess.PIPE,
                     text=False)  # bytes: text mode would turn the bar's \r into newlines
    finally:
        os.close(slave)
    shown = b""
    try:
        while chunk := os.read(master, 4096):
            shown += chunk
    except OSError:  # EIO once the terminal's other end is closed and drained
        pass
    finally:
        os.close(master)
    bar = proc.stderr.decode()
    assert proc.returncode == 0, bar
    assert "\r" in bar
    assert "read     [" + "#" * 30 + "] 6/6" in bar
    assert "deadletter-report: done" in shown.decode()
    assert "deadletter-report: read" not in shown.decode()  # no plain lines on a terminal


# --- on a real worker -----------------------------------------------------------------------

@pytest.mark.integration
def test_batch_sweep_sent_by_name_runs_on_a_batch_worker(
        data: redis.Redis, workers: WorkerFactory) -> None:
    s = get_settings()
    store = DeadLetterStore(data, s)
    store.record(dead("old", "push.notify", "permanent", "BadDeviceToken",
                      time.time() - (s.deadletter_retention_days + 1) * DAY))
    bare = s.key("deliveries", "left", 0)
    data.set(bare, 1)
    workers("batch")

    app.send_task("batch.sweep")

    wait_for(lambda: data.ttl(bare) > 0, what="the sweep to expire the TTL-less counter")
    assert store.get("old") is None
    wait_for(lambda: not data.exists(lock_key(s, get_job("sweep"))), what="the lock's release")

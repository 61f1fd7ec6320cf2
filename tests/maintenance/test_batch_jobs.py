"""The batch jobs' plain functions, `farm batch` (feed-rebuild against real feed shards), and
batch.sweep on a real worker."""

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

from config.celery_app import app
from config.settings import get_settings, replace
from schedules.batch import get_job
from tasks.core.deadletter import DeadLetter, DeadLetterStore
from tasks.core.ids import make_id
from tasks.core.jobs import lock_key, run_job
from tasks.core.locks import try_lock
from tasks.core.validation import MAX_USER_ID
from tasks.feeds.store import FeedStore, feed_store
from tasks.maintenance.report import deadletter_report
from tasks.maintenance.sweep import sweep, ttl_rules
from tests.support.workers import WorkerFactory, wait_for
from workers.cli import main

ROOT = Path(__file__).resolve().parents[2]
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
        ["feed-trim", "every", "1d"], ["fanout-sweep", "every", "1m"],
        ["photo-sweep", "every", "5m"], ["feed-rebuild", "on", "demand"]]
    assert lines[5].split()[3] == "batch.feed_rebuild"

    assert main(["batch", "nope"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["farm batch: unknown batch job 'nope'; "
                   "known: deadletter-report, sweep, feed-trim, fanout-sweep, photo-sweep, "
                   "feed-rebuild"]

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
    holder = try_lock(data, lock_key(s, get_job("sweep").job), 60)
    assert holder is not None
    assert main(["batch", "sweep"]) == 0
    assert capsys.readouterr().out.splitlines() == ["sweep: skipped: already running"]
    assert data.ttl(s.key("deliveries", "t", 0)) == -1

    assert main(["batch", "sweep", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "skipped"


def test_cli_help_lists_every_job_and_how_often(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["batch", "--help"])
    out = capsys.readouterr().out
    assert "[NAME] [USER_ID ...]" in out
    jobs = out.split("jobs:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert [line.split()[:3] for line in jobs] == [
        ["deadletter-report", "every", "1h"], ["sweep", "every", "15m"],
        ["feed-trim", "every", "1d"], ["fanout-sweep", "every", "1m"],
        ["photo-sweep", "every", "5m"], ["feed-rebuild", "on", "demand"]]


# --- farm batch feed-rebuild (on demand, per user) ------------------------------------------

NOW_MS = int(time.time() * 1000)
A, B = 101, 102  # two readers, on different feed shards
FOLLOWEES = (201, 202, 203)
STRANGER = 204  # followed by neither


def pid(minutes_ago: int) -> int:
    """A photo id made that long ago (ids sort by time); all older than a rebuild's margin."""
    return make_id(NOW_MS - minutes_ago * 60_000, 0, 0)


def feed(store: FeedStore, uid: int) -> list[str]:
    return store.shard_for(uid).lrange(store.feed_key(uid), 0, -1)


@pytest.fixture
def graph(sharded: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> FeedStore:
    """Feeds over three shards, cap 5, rebuilds from each followee's 3 newest posts. A follows
    201 and 202, B follows 202 and 203; one of 202's posts is deleted. Returns the store."""
    monkeypatch.setenv("FARM_FEED_CAP", "5")
    monkeypatch.setenv("FARM_FEED_BACKFILL", "3")
    get_settings.cache_clear()
    store = feed_store()
    assert store.shard_index(A) != store.shard_index(B)
    store.follow(A, 201)
    store.follow(A, 202)
    store.follow(B, 202)
    store.follow(B, 203)
    posts = {201: [10, 40, 70, 100], 202: [20, 50, 80], 203: [30, 60], A: [25], STRANGER: [5]}
    for uid, minutes in posts.items():
        store.graph.rpush(store.posts_key(uid), *(pid(m) for m in minutes))  # newest first
    for client in [store.graph, *store.shards]:  # as delete_photo tombstones it everywhere
        client.set(store.tombstone_key(pid(50)), "1")
    return store


# A: 201's newest three (10, 40, 70; 100 is past the backfill), 202's live ones (20, 80), its own
# 25: newest first, capped at 5. B: 202's (20, 80) and 203's (30, 60), under the cap.
EXPECTED = {A: [str(pid(m)) for m in (10, 20, 25, 40, 70)],
            B: [str(pid(m)) for m in (20, 30, 60, 80)]}


def corrupt(store: FeedStore) -> None:
    """A's feed: a stranger's post, one past the backfill, a duplicate, a deleted photo, junk,
    out of order. B's feed: gone."""
    a = store.shard_for(A)
    a.delete(store.feed_key(A))
    a.rpush(store.feed_key(A), pid(100), pid(5), pid(40), pid(40), pid(50), "junk")
    store.shard_for(B).delete(store.feed_key(B))


def test_cli_feed_rebuild_restores_the_exact_feeds_and_is_idempotent(
        graph: FeedStore, data: redis.Redis, capsys: pytest.CaptureFixture[str]) -> None:
    corrupt(graph)

    assert main(["batch", "feed-rebuild", str(B), str(A)]) == 0

    assert capsys.readouterr().out.splitlines() == [
        "feed-rebuild: users 2/2", "feed-rebuild: done", "  rebuilt: 2", "  entries: 9"]
    assert {A: feed(graph, A), B: feed(graph, B)} == EXPECTED
    assert len(feed(graph, A)) == get_settings().feed_cap
    assert not data.keys("*lock*")

    assert main(["batch", "feed-rebuild", str(A), str(B), str(A), "--json"]) == 0  # again
    out = capsys.readouterr()
    assert json.loads(out.out) == {
        "job": "feed-rebuild", "status": "done", "rebuilt": 2, "entries": 9}
    assert out.err.splitlines() == ["feed-rebuild: users 2/2"]  # stdout is the JSON alone
    assert {A: feed(graph, A), B: feed(graph, B)} == EXPECTED
    assert not graph.shard_for(STRANGER).exists(graph.feed_key(STRANGER))


def test_feed_rebuild_reports_progress_per_user(graph: FeedStore, data: redis.Redis) -> None:
    calls: list[tuple[str, int, int | None]] = []
    result = run_job(get_job("feed-rebuild").job, data, get_settings(),
                     lambda *c: calls.append(c), [B, A])
    assert result == {"job": "feed-rebuild", "status": "done", "rebuilt": 2, "entries": 9}
    assert calls == [("users", 0, 2), ("users", 1, 2), ("users", 2, 2)]
    assert {A: feed(graph, A), B: feed(graph, B)} == EXPECTED


@pytest.mark.parametrize(("argv", "message"), [
    ([], "farm batch: feed-rebuild needs at least one user id "
         "(farm batch feed-rebuild USER_ID [USER_ID ...])"),
    ([str(A), "abc"], "farm batch: user ids must be integers, got 'abc'"),
    ([str(A), "0"], f"farm batch: user_ids[1]: must be between 1 and {MAX_USER_ID}, got 0"),
    ([str(A), "-5"], f"farm batch: user_ids[1]: must be between 1 and {MAX_USER_ID}, got -5"),
    ([str(MAX_USER_ID + 1)],
     f"farm batch: user_ids[0]: must be between 1 and {MAX_USER_ID}, got {MAX_USER_ID + 1}"),
])
def test_cli_feed_rebuild_refuses_bad_ids_and_does_nothing(
        graph: FeedStore, data: redis.Redis, capsys: pytest.CaptureFixture[str],
        argv: list[str], message: str) -> None:
    corrupt(graph)
    before = feed(graph, A)

    assert main(["batch", "feed-rebuild", *argv]) == 2

    out = capsys.readouterr()
    assert (out.out, out.err.splitlines()) == ("", [message])
    assert feed(graph, A) == before  # A's id was fine: still nothing is done
    assert not graph.shard_for(B).exists(graph.feed_key(B))
    assert not data.keys("*lock*")


def test_cli_user_ids_given_to_a_job_that_takes_none(
        data: redis.Redis, capsys: pytest.CaptureFixture[str]) -> None:
    data.set(get_settings().key("deliveries", "t", 0), 1)
    assert main(["batch", "sweep", "12"]) == 2
    assert capsys.readouterr().err.splitlines() == ["farm batch: sweep takes no user ids"]
    assert data.ttl(get_settings().key("deliveries", "t", 0)) == -1  # the sweep did not run
    assert not data.keys("*lock*")


def test_feed_rebuild_locks_per_set_of_users(
        graph: FeedStore, data: redis.Redis, capsys: pytest.CaptureFixture[str]) -> None:
    s, job = get_settings(), get_job("feed-rebuild").job
    corrupt(graph)
    stale = feed(graph, A)
    holder = try_lock(data, lock_key(s, job, [A]), 60)  # a rebuild of A running elsewhere
    assert holder is not None

    assert main(["batch", "feed-rebuild", str(A)]) == 0
    assert capsys.readouterr().out.splitlines() == ["feed-rebuild: skipped: already running"]
    assert feed(graph, A) == stale

    assert main(["batch", "feed-rebuild", str(B)]) == 0  # another user: not blocked
    assert "feed-rebuild: done" in capsys.readouterr().out.splitlines()
    assert feed(graph, B) == EXPECTED[B]
    assert holder.owned()  # the other run's lock is left alone
    holder.release()
    assert main(["batch", "feed-rebuild", str(A)]) == 0
    assert feed(graph, A) == EXPECTED[A]


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
    wait_for(lambda: not data.exists(lock_key(s, get_job("sweep").job)), what="the lock's release")

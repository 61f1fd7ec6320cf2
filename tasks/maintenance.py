"""batch.*: the farm's own upkeep, run by beat (schedules/beat.py) or by hand (`farm batch`).

The work is in plain functions of (client, settings, progress); the tasks are thin wrappers that
run them under the job's lock through schedules.batch.run_job, as `farm batch` does.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import redis

from config.redis import data_redis
from config.settings import Settings, get_settings
from schedules.batch import Progress, Result, no_progress, run_job
from tasks.base import farm_task
from tasks.deadletter import DeadLetter, DeadLetterStore

log = logging.getLogger("farm.batch")

SCAN_COUNT = 1000  # keys per SCAN/HSCAN/ZSCAN step: one progress tick, one short Redis call

# Remove index entries whose record is gone, atomically: a record() running meanwhile writes its
# hash field and index entry in one MULTI, so it can never be caught half-written.
_DROP_ORPHANS = """
local n = 0
for _, id in ipairs(ARGV) do
  if redis.call('HEXISTS', KEYS[1], id) == 0 then n = n + redis.call('ZREM', KEYS[2], id) end
end
return n
"""
# Expire keys that have no TTL; TTL is checked in the same step, so a TTL set meanwhile stays.
_EXPIRE_PERSISTENT = """
local n = 0
for _, key in ipairs(KEYS) do
  if redis.call('TTL', key) == -1 then redis.call('EXPIRE', key, ARGV[1]); n = n + 1 end
end
return n
"""


def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if ts else "-"


def _top(counts: dict[str, int]) -> str:
    return next((f"{k}:{v}" for k, v in counts.items()), "-")


def _hscan(client: redis.Redis, key: str) -> Iterator[dict[str, str]]:
    cursor = 0
    while True:
        cursor, batch = client.hscan(key, cursor, count=SCAN_COUNT)
        yield batch
        if cursor == 0:
            return


def _scan(client: redis.Redis, match: str) -> Iterator[list[str]]:
    cursor = 0
    while True:
        cursor, batch = client.scan(cursor, match=match, count=SCAN_COUNT)
        yield batch
        if cursor == 0:
            return


def deadletter_report(client: redis.Redis, s: Settings,
                      progress: Progress = no_progress) -> Result:
    """Counts by task, reason and error type, and the oldest and newest failure; stored as JSON
    under ``{prefix}:deadletter:report`` for `farm stats` and dashboards."""
    store = DeadLetterStore(client, s)
    size = int(client.hlen(store.items))
    by_task: Counter[str] = Counter()
    by_reason: Counter[str] = Counter()
    by_error: Counter[str] = Counter()
    seen: set[str] = set()
    failed_at: list[float] = []
    unreadable = 0
    progress("read", 0, size)
    for batch in _hscan(client, store.items):
        for entry_id, raw in batch.items():
            if entry_id in seen:  # HSCAN may return a field twice while the hash grows
                continue
            seen.add(entry_id)
            try:
                e = DeadLetter.from_json(raw)
            except (ValueError, TypeError):
                unreadable += 1
                continue
            by_task[e.task] += 1
            by_reason[e.reason] += 1
            by_error[e.error.split(":", 1)[0].strip() or "?"] += 1  # "TypeName: message"
            failed_at.append(e.failed_at)
        progress("read", len(seen), max(size, len(seen)))
    progress("read", len(seen), len(seen))
    report: dict[str, Any] = {
        "generated_at": time.time(),
        "total": len(failed_at),
        "by_task": dict(by_task.most_common()),
        "by_reason": dict(by_reason.most_common()),
        "by_error": dict(by_error.most_common()),
        "oldest_at": min(failed_at, default=None),
        "newest_at": max(failed_at, default=None),
        "unreadable": unreadable,
    }
    client.set(s.key("deadletter", "report"), json.dumps(report, separators=(",", ":")))
    log.info("deadletter report total=%d oldest=%s newest=%s top_task=%s top_error=%s "
             "unreadable=%d", report["total"], _when(report["oldest_at"]),
             _when(report["newest_at"]), _top(report["by_task"]), _top(report["by_error"]),
             unreadable)
    return report


def ttl_rules(s: Settings) -> list[tuple[str, int]]:
    """(SCAN pattern, TTL seconds) for farm keys that must expire but may have been left without.

    Delivery counters get INCR and EXPIRE in two steps (tasks/base.py): a process killed between
    them leaves a counter that would live forever. Same TTL as base.py gives them.
    """
    return [(_glob_escape(s.key("deliveries")) + ":*",
             s.visibility_timeout * (s.max_deliveries + 2))]


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def sweep(client: redis.Redis, s: Settings, progress: Progress = no_progress) -> Result:
    """Repair the dead-letter index both ways, purge dead letters past retention, and put a TTL on
    farm keys that should have one. Every step is safe to rerun or to interrupt."""
    store = DeadLetterStore(client, s)
    out = {"reindexed": 0, "index_orphans": 0, "purged": 0, "ttl_set": 0, "keys_checked": 0}

    # Records with no index entry are invisible to list and purge: index them by failure time.
    # Runs before the purge so an old unindexed record is purged in the same sweep.
    done, size = 0, int(client.hlen(store.items))
    for batch in _hscan(client, store.items):
        ids = list(batch)
        scores = client.zmscore(store.index, ids) if ids else []
        missing: dict[str, float] = {}
        for entry_id, score in zip(ids, scores, strict=True):
            if score is None:
                try:
                    missing[entry_id] = float(json.loads(batch[entry_id])["failed_at"])
                except (ValueError, TypeError, KeyError):
                    continue  # unreadable: the report counts it; an operator decides
        if missing:  # NX: never moves an entry record() wrote meanwhile
            out["reindexed"] += int(client.zadd(store.index, missing, nx=True))
        done += len(ids)
        progress("reindex", done, max(size, done))
    progress("reindex", done, done)

    drop = client.register_script(_DROP_ORPHANS)
    # A record removed between the steps above leaves an index entry behind: dropped here.
    done, cursor, size = 0, 0, int(client.zcard(store.index))
    while True:
        cursor, pairs = client.zscan(store.index, cursor, count=SCAN_COUNT)
        if pairs:
            out["index_orphans"] += int(drop(keys=[store.items, store.index],
                                             args=[m for m, _ in pairs]))
        done += len(pairs)
        progress("orphans", done, max(size, done))
        if cursor == 0:
            break
    progress("orphans", done, done)

    out["purged"] = store.purge(older_than=time.time() - s.deadletter_retention_days * 86400)
    progress("purge", out["purged"], out["purged"])

    expire = client.register_script(_EXPIRE_PERSISTENT)
    for pattern, ttl in ttl_rules(s):
        for keys in _scan(client, pattern):
            if keys:
                out["ttl_set"] += int(expire(keys=keys, args=[ttl]))
            out["keys_checked"] += len(keys)
            progress("ttl", out["keys_checked"], None)
    progress("ttl", out["keys_checked"], out["keys_checked"])

    log.info("sweep %s", " ".join(f"{k}={v}" for k, v in out.items()))
    return out


@farm_task("batch.deadletter_report", max_retries=0)
def deadletter_report_task() -> Result:
    return run_job("deadletter-report", data_redis(), get_settings())


@farm_task("batch.sweep", max_retries=0)
def sweep_task() -> Result:
    return run_job("sweep", data_redis(), get_settings())


@farm_task("batch.feed_trim", max_retries=0)
def feed_trim_task() -> Result:
    return run_job("feed-trim", data_redis(), get_settings())


@farm_task("batch.fanout_sweep", max_retries=0)
def fanout_sweep_task() -> Result:
    return run_job("fanout-sweep", data_redis(), get_settings())


@farm_task("batch.feed_rebuild", max_retries=0, permanent=(ValueError,))
def feed_rebuild_task(user_ids: list[int]) -> Result:
    """On demand only (beat never sends it): the same run as `farm batch feed-rebuild ID ...`."""
    return run_job("feed-rebuild", data_redis(), get_settings(), users=user_ids)

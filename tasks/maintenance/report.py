"""The deadletter-report batch job: dead letters counted by task, reason and error type."""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import redis

from config.settings import Settings
from tasks.core.deadletter import DeadLetter, DeadLetterStore
from tasks.core.jobs import Progress, Result, no_progress
from tasks.core.scan import hscan

log = logging.getLogger("farm.batch")


def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if ts else "-"


def _top(counts: dict[str, int]) -> str:
    return next((f"{k}:{v}" for k, v in counts.items()), "-")


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
    for batch in hscan(client, store.items):
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

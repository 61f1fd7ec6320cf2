"""The sweep batch job: the dead-letter index repaired both ways, dead letters past retention
purged, and a TTL put on farm keys that should have one. Every step is safe to rerun or to
interrupt."""

from __future__ import annotations

import json
import logging
import time
from typing import cast

import redis

from config.settings import Settings
from tasks.core.deadletter import DeadLetterStore
from tasks.core.jobs import Progress, Result, no_progress
from tasks.core.scan import SCAN_COUNT, glob_escape, hscan, scan
from tasks.core.scripts import Script

log = logging.getLogger("farm.batch")

DROP_ORPHANS = Script(__package__, "drop_orphans.lua")
EXPIRE_PERSISTENT = Script(__package__, "expire_persistent.lua")


def ttl_rules(s: Settings) -> list[tuple[str, int]]:
    """(SCAN pattern, TTL seconds) for farm keys that must expire but may have been left without.

    Delivery counters get INCR and EXPIRE in two steps (tasks/core/base.py): a process killed
    between them leaves a counter that would live forever. Same TTL as base.py gives them.
    """
    return [(glob_escape(s.key("deliveries")) + ":*",
             s.visibility_timeout * (s.max_deliveries + 2))]


def sweep(client: redis.Redis, s: Settings, progress: Progress = no_progress) -> Result:
    """Repair the dead-letter index both ways, purge dead letters past retention, and put a TTL on
    farm keys that should have one. Every step is safe to rerun or to interrupt."""
    store = DeadLetterStore(client, s)
    out = {"reindexed": 0, "index_orphans": 0, "purged": 0, "ttl_set": 0, "keys_checked": 0}

    # Records with no index entry are invisible to list and purge: index them by failure time.
    # Runs before the purge so an old unindexed record is purged in the same sweep.
    done, size = 0, int(client.hlen(store.items))
    for batch in hscan(client, store.items):
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
            # without incr=True, ZADD answers how many members it added
            out["reindexed"] += cast(int, client.zadd(store.index, missing, nx=True))
        done += len(ids)
        progress("reindex", done, max(size, done))
    progress("reindex", done, done)

    # A record removed between the steps above leaves an index entry behind: dropped here.
    done, cursor, size = 0, 0, int(client.zcard(store.index))
    while True:
        cursor, pairs = client.zscan(store.index, cursor, count=SCAN_COUNT)
        if pairs:
            out["index_orphans"] += int(DROP_ORPHANS(client, [store.items, store.index],
                                                     [m for m, _ in pairs]))
        done += len(pairs)
        progress("orphans", done, max(size, done))
        if cursor == 0:
            break
    progress("orphans", done, done)

    out["purged"] = store.purge(older_than=time.time() - s.deadletter_retention_days * 86400)
    progress("purge", out["purged"], out["purged"])

    for pattern, ttl in ttl_rules(s):
        for keys in scan(client, pattern):
            if keys:
                out["ttl_set"] += int(EXPIRE_PERSISTENT(client, keys, [ttl]))
            out["keys_checked"] += len(keys)
            progress("ttl", out["keys_checked"], None)
    progress("ttl", out["keys_checked"], out["keys_checked"])

    log.info("sweep %s", " ".join(f"{k}={v}" for k, v in out.items()))
    return out

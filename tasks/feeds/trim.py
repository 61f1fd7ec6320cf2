"""The feed-trim batch job: any feed over FARM_FEED_CAP, on any shard, trimmed."""

from __future__ import annotations

import logging

import redis

from config.settings import Settings
from tasks.core.jobs import Progress, Result, no_progress
from tasks.core.scan import SCAN_COUNT, glob_escape
from tasks.core.scripts import Script
from tasks.feeds.store import feed_store

log = logging.getLogger("farm.feeds")

TRIM = Script(__package__, "trim.lua")


def trim_feeds(client: redis.Redis, s: Settings, progress: Progress = no_progress) -> Result:
    """Trim every feed list over feed_cap, on every shard (SCAN, never KEYS). Fan-out trims as it
    writes; this catches what a cap lowered by configuration, or a bug, left behind."""
    del client  # feeds live on the shards, which feed_store knows
    store = feed_store(s)
    pattern = glob_escape(s.key_prefix) + ":feed:*"
    out = {"shards": len(store.shards), "feeds": 0, "trimmed": 0, "dropped": 0}
    for shard in store.shards:
        cursor = 0
        while True:
            cursor, keys = shard.scan(cursor, match=pattern, count=SCAN_COUNT, _type="list")
            if keys:
                lists, dropped = TRIM(shard, keys, [s.feed_cap])
                out["trimmed"] += int(lists)
                out["dropped"] += int(dropped)
            out["feeds"] += len(keys)
            progress("feeds", out["feeds"], None)
            if cursor == 0:
                break
    progress("feeds", out["feeds"], out["feeds"])
    log.info("feed-trim %s", " ".join(f"{k}={v}" for k, v in out.items()))
    return out

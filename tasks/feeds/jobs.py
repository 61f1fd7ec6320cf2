"""The feeds' batch jobs, declared by reference (their periods are in schedules/batch.py)."""

from __future__ import annotations

from datetime import timedelta

from tasks.core.jobs import Job
from tasks.feeds.ledger import resend_stale
from tasks.feeds.rebuild import rebuild_feeds
from tasks.feeds.trim import trim_feeds

FEED_TRIM = Job(
    "feed-trim", "batch.feed_trim", trim_feeds, timedelta(minutes=30),
    "trim feeds over FARM_FEED_CAP on every feed shard")
FANOUT_SWEEP = Job(
    "fanout-sweep", "batch.fanout_sweep", resend_stale, timedelta(minutes=5),
    "re-send fan-out chunks still not run FARM_FANOUT_SWEEP_AFTER after sending")
FEED_REBUILD = Job(
    "feed-rebuild", "batch.feed_rebuild", None, timedelta(minutes=30),
    "rebuild the given users' feeds from the people they follow (USER_ID ...)",
    users_func=rebuild_feeds)

"""Batch jobs by operator name, and when each runs: the jobs are declared beside their domains
(tasks/<domain>/jobs.py, by reference) and run through tasks/core/jobs.run_job, by beat's task or
by `farm batch NAME`; this module says which exist and how often beat sends each.

A job with no period is on demand only (beat never sends it).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from tasks.core.jobs import Job
from tasks.feeds.jobs import FANOUT_SWEEP, FEED_REBUILD, FEED_TRIM
from tasks.maintenance.jobs import DEADLETTER_REPORT, SWEEP
from tasks.photos.jobs import PHOTO_SWEEP


@dataclass(frozen=True)
class Scheduled:
    job: Job
    period: timedelta | None  # None: on demand only, never sent by beat

    @property
    def name(self) -> str:
        return self.job.name


JOBS: dict[str, Scheduled] = {
    entry.name: entry
    for entry in (
        Scheduled(DEADLETTER_REPORT, timedelta(hours=1)),
        Scheduled(SWEEP, timedelta(minutes=15)),
        Scheduled(FEED_TRIM, timedelta(days=1)),
        # Chunks lost with their worker are re-sent FARM_FANOUT_SWEEP_AFTER after they were sent;
        # looking every minute keeps that delay close to the setting.
        Scheduled(FANOUT_SWEEP, timedelta(minutes=1)),
        # A photo left in processing is failed at most this long after stuck_after (stuck.py).
        Scheduled(PHOTO_SWEEP, timedelta(minutes=5)),
        Scheduled(FEED_REBUILD, None),
    )
}


def get_job(name: str) -> Scheduled:
    try:
        return JOBS[name]
    except KeyError:
        raise ValueError(f"unknown batch job {name!r}; known: {', '.join(JOBS)}") from None

"""The beat schedule, in one place: one entry per batch job in schedules/batch.py.

Each entry names its queue explicitly and expires after about its period (sentry's habit): a run
still queued when the next one is due is worth nothing, so it is dropped instead of piling up
behind a stalled worker. Overlap of runs that do start is the lock's job (schedules/batch.py).
"""

from __future__ import annotations

from typing import Any

from config.queues import queue_for
from config.settings import Settings
from schedules.batch import JOBS, BatchJob


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """Celery's ``beat_schedule``: entry name (the job's operator name) -> entry."""
    del settings  # the schedule is the same in every environment today
    return {job.name: _entry(job) for job in JOBS.values()}


def _entry(job: BatchJob) -> dict[str, Any]:
    return {
        "task": job.task,
        "schedule": job.period,
        "options": {
            "queue": str(queue_for(job.task)),
            "expires": int(job.period.total_seconds()),
        },
    }

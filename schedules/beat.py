"""The beat schedule, in one place: one entry per periodic batch job in schedules/batch.py (jobs
with no period are on demand only: `farm batch NAME`).

Each entry names its queue explicitly and expires after about its period (sentry's habit): a run
still queued when the next one is due is worth nothing, so it is dropped instead of piling up
behind a stalled worker. Overlap of runs that do start is the job lock's (tasks/core/jobs.py).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from celery import Celery

from config.queues import queue_for
from config.settings import Settings
from schedules.batch import JOBS


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """Celery's ``beat_schedule``: entry name (the job's operator name) -> entry."""
    del settings  # the schedule is the same in every environment today
    return {entry.name: _entry(entry.job.task, entry.period) for entry in JOBS.values()
            if entry.period is not None}


def install(app: Celery, settings: Settings) -> None:
    """Give the app the schedule (`farm beat` does, before beat starts)."""
    app.conf.beat_schedule = beat_schedule(settings)


def _entry(task: str, period: timedelta) -> dict[str, Any]:
    return {
        "task": task,
        "schedule": period,
        "options": {
            "queue": str(queue_for(task)),
            "expires": int(period.total_seconds()),
        },
    }

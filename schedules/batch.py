"""Batch jobs by operator name: what each runs, how often, and the lock that keeps runs apart.

Beat (schedules/beat.py) sends each job's task on its period; `farm batch NAME` runs the same plain
function in-process for system cron. Both go through :func:`run_job`, so both take the same lock
and a run never overlaps another run of the same job, wherever it was started.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

import redis

from config.settings import Settings
from schedules.lock import RunLock

log = logging.getLogger("farm.batch")

Result = dict[str, Any]


class Progress(Protocol):
    """Told how far a job's current step is: items done of total (an estimate, or None while
    unknown). The last call of each step gives its final count as both done and total.
    """

    def __call__(self, step: str, done: int, total: int | None) -> None: ...


def no_progress(step: str, done: int, total: int | None) -> None:
    """The reporter under beat: a worker has no one to show a bar to."""


JobFunc = Callable[[redis.Redis, Settings, Progress], Result]


@dataclass(frozen=True)
class BatchJob:
    name: str  # what operators type: `farm batch NAME`
    task: str  # the stable Celery task name, routed in config/queues.py
    func: str  # "module:function"; imported on use, as config.celery_app imports this registry
    period: timedelta
    lock_ttl: timedelta  # longer than a run can last (see lock_ttl_seconds)
    description: str

    def load(self) -> JobFunc:
        module, _, attr = self.func.partition(":")
        return getattr(importlib.import_module(module), attr)  # type: ignore[no-any-return]


JOBS: dict[str, BatchJob] = {
    job.name: job
    for job in (
        BatchJob("deadletter-report", "batch.deadletter_report",
                 "tasks.maintenance:deadletter_report", timedelta(hours=1),
                 timedelta(minutes=10),
                 "summarise dead letters by task, reason and error; keep the latest report"),
        BatchJob("sweep", "batch.sweep", "tasks.maintenance:sweep", timedelta(minutes=15),
                 timedelta(minutes=10),
                 "purge old dead letters, repair the dead-letter index, expire TTL-less keys"),
        BatchJob("feed-trim", "batch.feed_trim", "tasks.feed_upkeep:trim_feeds",
                 timedelta(days=1), timedelta(minutes=30),
                 "trim feeds over FARM_FEED_CAP on every feed shard"),
    )
}


def get_job(name: str) -> BatchJob:
    try:
        return JOBS[name]
    except KeyError:
        raise ValueError(f"unknown batch job {name!r}; known: {', '.join(JOBS)}") from None


def lock_key(s: Settings, job: BatchJob) -> str:
    return s.key("lock", "batch", job.name)


def lock_ttl_seconds(s: Settings, job: BatchJob) -> float:
    # Under a worker the hard time limit ends any run, so the lock must outlive that limit. By
    # hand there is no limit: run_job renews the lock as the job reports progress instead.
    return max(job.lock_ttl.total_seconds(), s.task_time_limit + 60)


RENEW_EVERY = 5.0  # seconds between lock renewals; far below any TTL, few round trips


def run_job(name: str, client: redis.Redis, s: Settings,
            progress: Progress = no_progress) -> Result:
    """Run a job under its lock: {"job", "status": "done", ...its result} or status "skipped".

    A run that finds the lock taken does nothing. Raises LockLost if the lock expires under the
    run (it stops rather than overlap the run that may now hold it).
    """
    job = get_job(name)
    lock = RunLock(client, lock_key(s, job), lock_ttl_seconds(s, job))
    if not lock.acquire():
        log.info("batch=%s skipped: already running (lock %s held by %s)", job.name, lock.key,
                 lock.holder() or "?")
        return {"job": job.name, "status": "skipped", "reason": "already running"}
    renewed = time.monotonic()

    def tick(step: str, done: int, total: int | None) -> None:
        nonlocal renewed
        if time.monotonic() - renewed >= RENEW_EVERY:
            lock.renew()
            renewed = time.monotonic()
        progress(step, done, total)

    try:
        result = job.load()(client, s, tick)
    finally:
        if not lock.release():
            log.warning("batch=%s lock %s had expired before the run ended", job.name, lock.key)
    return {"job": job.name, "status": "done", **result}

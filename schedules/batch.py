"""Batch jobs by operator name: what each runs, how often, and the lock that keeps runs apart.

Beat (schedules/beat.py) sends each periodic job's task on its period; `farm batch NAME` runs the
same plain function in-process for system cron. Both go through :func:`run_job`, so both take the
same lock and a run never overlaps another run of the same job, wherever it was started.

A job with no period is on demand only (beat never sends it), and a job may take user ids
(`farm batch feed-rebuild 12 34`): its function gets them as a fourth argument, and its lock is
per set of users, so runs for different users proceed side by side.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol, cast

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
# A job that takes user ids gets them, deduplicated and sorted, as a fourth argument.
UsersJobFunc = Callable[[redis.Redis, Settings, Progress, list[int]], Result]


@dataclass(frozen=True)
class BatchJob:
    name: str  # what operators type: `farm batch NAME`
    task: str  # the stable Celery task name, routed in config/queues.py
    func: str  # "module:function"; imported on use, as config.celery_app imports this registry
    period: timedelta | None  # None: on demand only, never sent by beat
    lock_ttl: timedelta  # longer than a run can last (see lock_ttl_seconds)
    description: str
    takes_users: bool = False  # `farm batch NAME USER_ID [USER_ID ...]`: one or more required

    def load(self) -> JobFunc | UsersJobFunc:
        module, _, attr = self.func.partition(":")
        return getattr(importlib.import_module(module), attr)  # type: ignore[no-any-return]

    def check_users(self, users: Sequence[int]) -> list[int]:
        """The user ids this job is to run for, deduplicated and sorted; ValueError when the job
        takes users and none are given, when it takes none and some are, or when one is not a
        user id (tasks.feed_store.check_id). Called before the lock: a refused run touches
        nothing."""
        if not self.takes_users:
            if users:
                raise ValueError(f"{self.name} takes no user ids")
            return []
        if not users:
            raise ValueError(f"{self.name} needs at least one user id")
        from tasks.errors import PermanentError  # on use: the schedule imports no task code
        from tasks.feed_store import check_id

        try:
            return sorted({check_id("user_id", uid) for uid in users})
        except PermanentError as exc:
            raise ValueError(str(exc)) from None


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
        BatchJob("fanout-sweep", "batch.fanout_sweep", "tasks.fanout_ledger:resend_stale",
                 timedelta(minutes=1), timedelta(minutes=5),
                 "re-send fan-out chunks still not run FARM_FANOUT_SWEEP_AFTER after sending"),
        BatchJob("feed-rebuild", "batch.feed_rebuild", "tasks.feed_upkeep:rebuild_feeds",
                 None, timedelta(minutes=30),
                 "rebuild the given users' feeds from the people they follow (USER_ID ...)",
                 takes_users=True),
    )
}


def get_job(name: str) -> BatchJob:
    try:
        return JOBS[name]
    except KeyError:
        raise ValueError(f"unknown batch job {name!r}; known: {', '.join(JOBS)}") from None


LOCK_USERS_MAX = 200  # characters of joined user ids kept in a lock key; longer ones are hashed


def lock_key(s: Settings, job: BatchJob, users: Sequence[int] = ()) -> str:
    """The job's lock; for a job that takes users, one lock per set of users (the same users in
    any order or repeated share it): runs for other users go ahead."""
    if not job.takes_users:
        return s.key("lock", "batch", job.name)
    joined = ",".join(map(str, sorted(set(users))))
    if len(joined) > LOCK_USERS_MAX:
        joined = "sha256-" + hashlib.sha256(joined.encode()).hexdigest()
    return s.key("lock", "batch", job.name, joined)


def lock_ttl_seconds(s: Settings, job: BatchJob) -> float:
    # Under a worker the hard time limit ends any run, so the lock must outlive that limit. By
    # hand there is no limit: run_job renews the lock as the job reports progress instead.
    return max(job.lock_ttl.total_seconds(), s.task_time_limit + 60)


RENEW_EVERY = 5.0  # seconds between lock renewals; far below any TTL, few round trips


def run_job(name: str, client: redis.Redis, s: Settings,
            progress: Progress = no_progress, users: Sequence[int] = ()) -> Result:
    """Run a job under its lock: {"job", "status": "done", ...its result} or status "skipped".

    ``users`` are for a job that takes them (ValueError, before anything is done, if they are
    missing or given to a job that takes none). A run that finds the lock taken does nothing.
    Raises LockLost if the lock expires under the run (it stops rather than overlap the run that
    may now hold it).
    """
    job = get_job(name)
    uids = job.check_users(users)
    lock = RunLock(client, lock_key(s, job, uids), lock_ttl_seconds(s, job))
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
        if job.takes_users:
            result = cast(UsersJobFunc, job.load())(client, s, tick, uids)
        else:
            result = cast(JobFunc, job.load())(client, s, tick)
    finally:
        if not lock.release():
            log.warning("batch=%s lock %s had expired before the run ended", job.name, lock.key)
    return {"job": job.name, "status": "done", **result}

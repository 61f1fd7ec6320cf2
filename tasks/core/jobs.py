"""Batch jobs: what one is, and how a run goes (under its lock, reporting progress).

A job is a plain function of (client, settings, progress[, user ids]) declared beside its domain
(``tasks/<domain>/jobs.py``) and referenced, never named by string. Beat's task for it and
`farm batch NAME` both call :func:`run_job`, so both take the same lock and a run never overlaps
another run of the same job, wherever it was started. *When* jobs run is schedules/' business.

A job may take user ids (`farm batch feed-rebuild 12 34`): its function gets them as a fourth
argument, and its lock is per set of users, so runs for different users proceed side by side.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

import redis

from config.settings import Settings
from tasks.core import validation
from tasks.core.locks import LockNotOwnedError, holder, try_lock

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


class LockLost(RuntimeError):
    """The lock expired under a running job (and may now be another run's)."""


@dataclass(frozen=True)
class Job:
    name: str  # what operators type: `farm batch NAME`
    task: str  # the stable Celery task name, routed in config/queues.py
    func: JobFunc | None  # exactly one of func and users_func
    lock_ttl: timedelta  # longer than a run can last (see lock_ttl_seconds)
    description: str
    users_func: UsersJobFunc | None = None  # `farm batch NAME USER_ID [USER_ID ...]`

    def __post_init__(self) -> None:
        if (self.func is None) == (self.users_func is None):
            raise TypeError(f"job {self.name}: give exactly one of func and users_func")

    @property
    def takes_users(self) -> bool:
        return self.users_func is not None

    def check_users(self, users: Sequence[object]) -> list[int]:
        """The user ids this job is to run for, deduplicated and sorted; ValueError when the job
        takes users and none are given, when it takes none and some are, or when one is not a
        user id. Called before the lock: a refused run touches nothing."""
        if not self.takes_users:
            if users:
                raise ValueError(f"{self.name} takes no user ids")
            return []
        if not users:
            raise ValueError(f"{self.name} needs at least one user id")
        return sorted(set(validation.valid_user_ids("user_ids", list(users), limit=None)))


def lock_key(s: Settings, job: Job, users: Sequence[int] = ()) -> str:
    """The job's lock; for a job that takes users, one lock per set of users (the same users in
    any order or repeated share it): runs for other users go ahead."""
    if not job.takes_users:
        return s.key("lock", "batch", job.name)
    joined = ",".join(map(str, sorted(set(users))))
    if len(joined) > LOCK_USERS_MAX:
        joined = "sha256-" + hashlib.sha256(joined.encode()).hexdigest()
    return s.key("lock", "batch", job.name, joined)


LOCK_USERS_MAX = 200  # characters of joined user ids kept in a lock key; longer ones are hashed
RENEW_EVERY = 5.0  # seconds between lock renewals; far below any TTL, few round trips


def lock_ttl_seconds(s: Settings, job: Job) -> float:
    # Under a worker the hard time limit ends any run, so the lock must outlive that limit. By
    # hand there is no limit: run_job renews the lock as the job reports progress instead.
    return max(job.lock_ttl.total_seconds(), s.task_time_limit + 60)


def run_job(job: Job, client: redis.Redis, s: Settings, progress: Progress = no_progress,
            users: Sequence[int] = ()) -> Result:
    """Run a job under its lock: {"job", "status": "done", ...its result} or status "skipped".

    ``users`` are for a job that takes them (ValueError, before anything is done, if they are
    missing or given to a job that takes none). A run that finds the lock taken does nothing.
    Raises LockLost if the lock expires under the run (it stops rather than overlap the run that
    may now hold it).
    """
    uids = job.check_users(users)
    key = lock_key(s, job, uids)
    lock = try_lock(client, key, lock_ttl_seconds(s, job))
    if lock is None:
        log.info("batch=%s skipped: already running (lock %s held by %s)", job.name, key,
                 holder(client, key) or "?")
        return {"job": job.name, "status": "skipped", "reason": "already running"}
    renewed = time.monotonic()

    def tick(step: str, done: int, total: int | None) -> None:
        nonlocal renewed
        if time.monotonic() - renewed >= RENEW_EVERY:
            try:
                lock.extend(lock_ttl_seconds(s, job), replace_ttl=True)
            except LockNotOwnedError:
                raise LockLost(f"lock {key} expired or was taken while the job ran") from None
            renewed = time.monotonic()
        progress(step, done, total)

    try:
        if job.users_func is not None:
            result = job.users_func(client, s, tick, uids)
        else:
            assert job.func is not None  # a Job has exactly one of the two (__post_init__)
            result = job.func(client, s, tick)
    finally:
        try:
            lock.release()
        except LockNotOwnedError:
            log.warning("batch=%s lock %s had expired before the run ended", job.name, key)
    return {"job": job.name, "status": "done", **result}

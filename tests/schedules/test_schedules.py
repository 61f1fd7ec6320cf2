"""The beat schedule, the batch registry and the run lock, against the session's test Redis."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from datetime import timedelta

import pytest
import redis
from celery.beat import Scheduler

from config.celery_app import app
from config.queues import QUEUES, ROUTES
from config.settings import get_settings
from schedules.batch import JOBS, get_job
from schedules.beat import beat_schedule, install
from tasks.core.deadletter import DeadLetter, DeadLetterStore
from tasks.core.jobs import Job, LockLost, lock_key, lock_ttl_seconds, run_job
from tasks.core.locks import LockNotOwnedError, holder, try_lock
from tests.support.workers import wait_for


def _old_dead_letter(data: redis.Redis) -> DeadLetterStore:
    s = get_settings()
    store = DeadLetterStore(data, s)
    store.record(DeadLetter(id="old", task="push.notify", queue="push", args=[], kwargs={},
                            reason="permanent", error="BadDeviceToken", traceback="", attempts=1,
                            failed_at=time.time() - (s.deadletter_retention_days + 1) * 86400))
    return store


def job_named(name: str) -> Job:
    return get_job(name).job


# --- beat -----------------------------------------------------------------------------------

def test_every_periodic_job_has_a_beat_entry_on_its_routed_queue_expiring_in_its_period() -> None:
    schedule = beat_schedule(get_settings())
    assert set(schedule) == {name for name, job in JOBS.items() if job.period is not None}
    for name, entry in schedule.items():
        job = JOBS[name]
        assert job.period is not None
        assert entry["task"] == job.job.task
        assert entry["task"] in ROUTES, f"{name}: task {entry['task']} has no route"
        assert entry["options"]["queue"] in QUEUES
        assert entry["options"]["queue"] == ROUTES[entry["task"]]
        assert isinstance(entry["schedule"], timedelta)
        period = entry["schedule"].total_seconds()
        assert period == job.period.total_seconds()
        assert 0 < entry["options"]["expires"] <= period


def test_on_demand_jobs_have_no_beat_entry_but_a_routed_task() -> None:
    on_demand = [job for job in JOBS.values() if job.period is None]
    assert [job.name for job in on_demand] == ["feed-rebuild"]
    schedule = beat_schedule(get_settings())
    for job in on_demand:
        assert job.name not in schedule
        assert job.job.task not in {entry["task"] for entry in schedule.values()}
        assert ROUTES[job.job.task] == "maintenance"
    assert job_named("feed-rebuild").takes_users
    assert not any(job.job.takes_users for job in JOBS.values() if job.period is not None)


def test_farm_beat_installs_the_schedule_and_the_app_registers_every_jobs_task() -> None:
    install(app, get_settings())
    assert app.conf.beat_schedule == beat_schedule(get_settings())
    for entry in JOBS.values():
        assert entry.job.task in app.tasks
        assert callable(entry.job.func or entry.job.users_func)


def test_beat_publishes_an_entry_to_its_queue_with_an_expiry(
        data: redis.Redis, broker: redis.Redis) -> None:
    install(app, get_settings())
    scheduler = Scheduler(app=app, lazy=True)
    scheduler.merge_inplace(app.conf.beat_schedule)
    scheduler.apply_async(scheduler.schedule["sweep"])
    raw = broker.lpop("maintenance")
    assert raw is not None, "beat's message did not reach the maintenance queue"
    headers = json.loads(raw)["headers"]
    assert headers["task"] == "batch.sweep"
    assert headers["expires"], "beat entries must expire"


def test_every_lock_outlives_the_hard_time_limit() -> None:
    s = get_settings()
    for entry in JOBS.values():
        assert lock_ttl_seconds(s, entry.job) > s.task_time_limit


def test_unknown_job_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="deadletter-report, sweep"):
        get_job("nope")


def test_user_ids_only_for_jobs_that_take_them_refused_before_the_lock(
        data: redis.Redis) -> None:
    s = get_settings()
    with pytest.raises(ValueError, match="sweep takes no user ids"):
        run_job(job_named("sweep"), data, s, users=[1])
    with pytest.raises(ValueError, match="feed-rebuild needs at least one user id"):
        run_job(job_named("feed-rebuild"), data, s)
    for bad in (0, -1, 2**53, True, "7"):
        with pytest.raises(ValueError, match=r"user_ids\[1\]: must be (an integer|between 1 and)"):
            run_job(job_named("feed-rebuild"), data, s, users=[5, bad])  # type: ignore[list-item]
    assert not data.keys("*")  # no lock taken, nothing written
    assert job_named("feed-rebuild").check_users([9, 3, 9]) == [3, 9]


# --- the lock -------------------------------------------------------------------------------

def test_lock_keys_periodic_per_job_and_on_demand_per_set_of_users() -> None:
    s = get_settings()
    assert lock_key(s, job_named("sweep")) == "farm:lock:batch:sweep"  # unchanged
    assert lock_key(s, job_named("feed-trim")) == "farm:lock:batch:feed-trim"
    rebuild = job_named("feed-rebuild")
    assert lock_key(s, rebuild, [34, 12, 34]) == "farm:lock:batch:feed-rebuild:12,34"
    assert lock_key(s, rebuild, [12, 34]) == lock_key(s, rebuild, [34, 12])
    assert lock_key(s, rebuild, [12]) != lock_key(s, rebuild, [34])
    many = list(range(1, 5000))
    key = lock_key(s, rebuild, many)
    assert key.startswith("farm:lock:batch:feed-rebuild:sha256-") and len(key) < 120
    assert key == lock_key(s, rebuild, many[::-1])
    assert key != lock_key(s, rebuild, many[:-1])


def test_a_second_acquire_fails_while_the_lock_is_held(data: redis.Redis) -> None:
    first = try_lock(data, "farm:lock:t", 60)
    assert first is not None
    assert try_lock(data, "farm:lock:t", 60) is None
    assert 0 < data.pttl("farm:lock:t") <= 60_000
    held_by = holder(data, "farm:lock:t") or ""
    assert held_by.split(":")[1] == str(os.getpid())  # host:pid:random, for "held by ..."
    first.release()
    assert try_lock(data, "farm:lock:t", 60) is not None


def test_an_expired_lock_can_be_taken_and_the_old_owner_cannot_release_or_renew_it(
        data: redis.Redis) -> None:
    crashed = try_lock(data, "farm:lock:t", 0.05)
    assert crashed is not None
    wait_for(lambda: not data.exists("farm:lock:t"), what="the lock's expiry")
    next_run = try_lock(data, "farm:lock:t", 60)
    assert next_run is not None
    with pytest.raises(LockNotOwnedError):
        crashed.extend(60, replace_ttl=True)
    with pytest.raises(LockNotOwnedError):
        crashed.release()
    assert data.exists("farm:lock:t")


def test_a_run_while_locked_is_skipped_and_does_nothing(data: redis.Redis) -> None:
    s = get_settings()
    store = _old_dead_letter(data)
    data.set(s.key("deliveries", "t1", 0), 1)
    key = lock_key(s, job_named("sweep"))
    held = try_lock(data, key, 60)
    assert held is not None

    result = run_job(job_named("sweep"), data, s)

    assert result == {"job": "sweep", "status": "skipped", "reason": "already running"}
    assert store.get("old") is not None
    assert data.ttl(s.key("deliveries", "t1", 0)) == -1
    assert held.owned()  # the running job's lock is left alone


def test_a_run_releases_its_lock_when_done_and_when_it_fails(
        data: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    s = get_settings()
    key = lock_key(s, job_named("sweep"))
    assert run_job(job_named("sweep"), data, s)["status"] == "done"
    assert not data.exists(key)

    def boom(*_: object) -> dict[str, int]:
        assert data.exists(key), "the job must run under its lock"
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        run_job(dataclasses.replace(job_named("sweep"), func=boom), data, s)
    assert not data.exists(key)


def test_a_run_whose_lock_was_lost_stops_at_its_next_progress_report(
        data: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    s = get_settings()
    key = lock_key(s, job_named("sweep"))
    steps: list[str] = []

    def job(client: redis.Redis, _s: object, progress: object) -> dict[str, int]:
        client.set(key, "someone-else")  # as if our lock expired and another run took it
        progress("step", 1, 2)  # type: ignore[operator]
        steps.append("went on")
        return {}

    monkeypatch.setattr("tasks.core.jobs.RENEW_EVERY", 0.0)
    with pytest.raises(LockLost):
        run_job(dataclasses.replace(job_named("sweep"), func=job), data, s)
    assert steps == []
    assert data.get(key) == "someone-else"  # the other run's lock is left alone

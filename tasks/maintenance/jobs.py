"""The maintenance batch jobs, declared by reference (their periods are in schedules/batch.py)."""

from __future__ import annotations

from datetime import timedelta

from tasks.core.jobs import Job
from tasks.maintenance.report import deadletter_report
from tasks.maintenance.sweep import sweep

DEADLETTER_REPORT = Job(
    "deadletter-report", "batch.deadletter_report", deadletter_report, timedelta(minutes=10),
    "summarise dead letters by task, reason and error; keep the latest report")
SWEEP = Job(
    "sweep", "batch.sweep", sweep, timedelta(minutes=10),
    "purge old dead letters, repair the dead-letter index, expire TTL-less keys")

"""The photos' batch jobs, declared by reference (their periods are in schedules/batch.py)."""

from __future__ import annotations

from datetime import timedelta

from tasks.core.jobs import Job
from tasks.photos.stuck import fail_stuck

PHOTO_SWEEP = Job(
    "photo-sweep", "batch.photo_sweep", fail_stuck, timedelta(minutes=10),
    "fail photo records left in processing longer than any run and its retry can take")

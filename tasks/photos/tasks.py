"""photos.*: thin tasks over the pipeline (pipeline.py), and beat's task for the photos' batch job
(jobs.py). Arguments are checked at entry by the task base (tasks/core/validation.py); whatever
dead-letters a photo's message ends its record failed (the on_dead_letter hooks)."""

from __future__ import annotations

from collections.abc import Sequence

from config.settings import get_settings
from tasks.core.base import farm_task
from tasks.core.jobs import Result, run_job
from tasks.core.redis import data_redis
from tasks.photos.jobs import PHOTO_SWEEP
from tasks.photos.pipeline import (
    process_photo,
    reprocess_dead_lettered,
    reprocess_photo,
    upload_dead_lettered,
)


@farm_task("photos.process", on_dead_letter=upload_dead_lettered)
def process(photo_id: int, owner_id: int, original_key: str, caption: str = "",
            share_to: Sequence[str] = ()) -> None:
    """Resize, store and record a new photo, then send the rest of its post."""
    process_photo(photo_id, owner_id, original_key, caption, share_to,
                  attempt=process.request.retries + 1)


@farm_task("photos.reprocess", on_dead_letter=reprocess_dead_lettered)
def reprocess(photo_id: int) -> None:
    """Batch: remake a photo's variants."""
    reprocess_photo(photo_id, attempt=reprocess.request.retries + 1)


@farm_task("batch.photo_sweep", max_retries=0)
def photo_sweep() -> Result:
    return run_job(PHOTO_SWEEP, data_redis(), get_settings())

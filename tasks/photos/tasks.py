"""photos.*: thin tasks over the pipeline (pipeline.py). Arguments are checked at entry by the
task base (tasks/core/validation.py)."""

from __future__ import annotations

from collections.abc import Sequence

from tasks.core.base import farm_task
from tasks.photos.pipeline import process_photo, reprocess_photo


@farm_task("photos.process")
def process(photo_id: int, owner_id: int, original_key: str, caption: str = "",
            share_to: Sequence[str] = ()) -> None:
    """Resize, store and record a new photo, then send the rest of its post."""
    process_photo(photo_id, owner_id, original_key, caption, share_to)


@farm_task("photos.reprocess")
def reprocess(photo_id: int) -> None:
    """Batch: remake a photo's variants."""
    reprocess_photo(photo_id)

"""photos.*: turn an uploaded original into the variants the apps show.

The spine routes, validates and dispatches; resizing and storage arrive with the photo-pipeline
issue. Until then ``photos.process`` starts the follow-on jobs of an upload, so every queue a post
touches is exercised end to end.
"""

from __future__ import annotations

from collections.abc import Sequence

from config.celery_app import app
from tasks.base import farm_task


def start_follow_ons(photo_id: int, owner_id: int, caption: str, share_to: Sequence[str]) -> None:
    """Everything that waits for a photo's variants: feeds, cross-posts, real-time subscribers."""
    app.send_task("feeds.fanout", kwargs={"photo_id": photo_id, "owner_id": owner_id})
    for network in share_to:
        app.send_task("social.crosspost", kwargs={
            "photo_id": photo_id, "owner_id": owner_id, "network": network, "caption": caption})
    app.send_task("webhooks.deliver", kwargs={"photo_id": photo_id, "owner_id": owner_id})


@farm_task("photos.process")
def process(photo_id: int, owner_id: int, original_key: str, caption: str = "",
            share_to: Sequence[str] = ()) -> None:
    start_follow_ons(photo_id, owner_id, caption, share_to)


@farm_task("photos.reprocess")
def reprocess(photo_id: int) -> None:
    """Batch: remake a photo's variants (after a size or quality change)."""

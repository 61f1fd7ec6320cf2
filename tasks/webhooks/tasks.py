"""webhooks.*: signed POSTs to real-time subscribers of new photos (the webhooks issue's work)."""

from __future__ import annotations

from tasks.core.base import farm_task


@farm_task("webhooks.deliver")
def deliver(photo_id: int, owner_id: int, caption: str = "") -> None:
    """Notify every subscriber of the owner's new photo."""


@farm_task("webhooks.replay")
def replay(subscriber_id: int, since: float) -> None:
    """Batch: deliver again what a subscriber missed."""

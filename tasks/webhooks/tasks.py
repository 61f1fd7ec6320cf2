"""webhooks.*: signed POSTs to real-time subscribers of new photos (the work: delivery.py)."""

from __future__ import annotations

from tasks.core.base import farm_task


@farm_task("webhooks.deliver")
def deliver(photo_id: int, owner_id: int, caption: str = "") -> None:
    """Notify every subscriber of the owner's new photo (and of its caption's hashtags), once
    per subscriber."""
    from tasks.webhooks.delivery import deliver as send

    send(photo_id, owner_id, caption)


@farm_task("webhooks.replay")
def replay(subscriber_id: int, since: float) -> None:
    """Batch: deliver again what a subscriber missed since ``since`` (Unix seconds)."""
    from tasks.webhooks.delivery import replay as send_again

    send_again(subscriber_id, since)

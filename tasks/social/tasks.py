"""social.*: cross-post a photo to the networks its owner chose (the work: crosspost.py)."""

from __future__ import annotations

from tasks.core.base import farm_task


@farm_task("social.crosspost")
def crosspost(photo_id: int, owner_id: int, network: str, caption: str = "") -> None:
    """Post the photo to one network, once."""
    from tasks.social.crosspost import crosspost as post

    post(photo_id, owner_id, network, caption)

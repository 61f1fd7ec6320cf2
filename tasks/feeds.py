"""feeds.*: put each new photo into every follower's feed, and keep feeds right as the graph
changes. Routed and enqueued by the spine; the fan-out itself is the feed issue's work."""

from __future__ import annotations

from tasks.base import farm_task


@farm_task("feeds.fanout")
def fanout(photo_id: int, owner_id: int) -> None:
    """Walk the owner's followers and enqueue chunks."""


@farm_task("feeds.fanout_chunk")
def fanout_chunk(photo_id: int, owner_id: int, cursor: int = 0) -> None:
    """Write one chunk of followers' feeds in one Redis round trip."""


@farm_task("feeds.follow")
def follow(follower_id: int, followee_id: int) -> None:
    """Backfill the followee's recent posts into the follower's feed."""


@farm_task("feeds.unfollow")
def unfollow(follower_id: int, followee_id: int) -> None:
    """Remove the followee's posts from the follower's feed."""


@farm_task("feeds.photo_deleted")
def photo_deleted(photo_id: int, owner_id: int) -> None:
    """Batch: remove a deleted photo from every follower's feed."""

"""feeds.*: thin tasks over the fan-out (tasks/fanout.py) and feed upkeep
(tasks/feed_upkeep.py). The data contract is in tasks/feed_store.py."""

from __future__ import annotations

from tasks import fanout as fan
from tasks import feed_upkeep as upkeep
from tasks.base import farm_task


@farm_task("feeds.fanout")
def fanout(photo_id: int, owner_id: int) -> None:
    """Walk the owner's followers with a cursor; enqueue chunks, active followers' first."""
    fan.fan_out(photo_id, owner_id)


@farm_task("feeds.fanout_chunk")
def fanout_chunk(photo_id: int, owner_id: int, lo: int, hi: int, active: bool) -> None:
    """Write one chunk of followers' feeds: one round trip per feed shard, safe to run twice."""
    fan.write_chunk(photo_id, owner_id, lo, hi, active)


@farm_task("feeds.follow")
def follow(follower_id: int, followee_id: int) -> None:
    """Merge the followee's recent posts into the follower's feed."""
    upkeep.backfill(follower_id, followee_id)


@farm_task("feeds.unfollow")
def unfollow(follower_id: int, followee_id: int) -> None:
    """Take the followee's posts out of the follower's feed."""
    upkeep.remove_followee(follower_id, followee_id)


@farm_task("feeds.photo_deleted")
def photo_deleted(photo_id: int, owner_id: int) -> None:
    """Batch: tombstone the photo and enqueue its removal from every follower's feed."""
    upkeep.delete_photo(photo_id, owner_id)


@farm_task("feeds.delete_chunk")
def delete_chunk(photo_id: int, owner_id: int, lo: int, hi: int) -> None:
    upkeep.delete_chunk(photo_id, owner_id, lo, hi)


@farm_task("feeds.rebuild")
def rebuild(user_id: int) -> None:
    """Batch: rebuild one user's feed from the people they follow."""
    upkeep.rebuild_feed(user_id)


@farm_task("feeds.activity")
def activity(user_id: int, kind: str, actor_id: int, event_id: str,
             photo_id: int | None = None) -> None:
    """Add one entry (like, comment, follow, mention) to a user's activity feed, once."""
    upkeep.add_activity(user_id, kind, actor_id, event_id, photo_id)

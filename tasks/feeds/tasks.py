"""feeds.*: thin tasks over fan-out (fanout.py, ledger.py) and feed upkeep (follows.py,
deletes.py, rebuild.py, activity.py), and beat's tasks for the feeds' batch jobs (jobs.py).
Arguments are checked at entry by the task base (tasks/core/validation.py); the data contract is
store.py."""

from __future__ import annotations

from config.settings import get_settings
from tasks.core.base import farm_task
from tasks.core.jobs import Result, run_job
from tasks.core.redis import data_redis
from tasks.feeds import activity as activity_list
from tasks.feeds import deletes, follows, jobs
from tasks.feeds import fanout as fan
from tasks.feeds import rebuild as rebuilds


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
    follows.backfill(follower_id, followee_id)


@farm_task("feeds.unfollow")
def unfollow(follower_id: int, followee_id: int) -> None:
    """Take the followee's posts out of the follower's feed."""
    follows.remove_followee(follower_id, followee_id)


@farm_task("feeds.photo_deleted")
def photo_deleted(photo_id: int, owner_id: int) -> None:
    """Batch: tombstone the photo and enqueue its removal from every follower's feed."""
    deletes.delete_photo(photo_id, owner_id)


@farm_task("feeds.delete_chunk")
def delete_chunk(photo_id: int, owner_id: int, lo: int, hi: int) -> None:
    deletes.delete_chunk(photo_id, owner_id, lo, hi)


@farm_task("feeds.rebuild")
def rebuild(user_id: int) -> None:
    """Batch: rebuild one user's feed from the people they follow."""
    rebuilds.rebuild_feed(user_id)


@farm_task("feeds.activity")
def activity(user_id: int, kind: str, actor_id: int, event_id: str,
             photo_id: int | None = None) -> None:
    """Add one entry (like, comment, follow, mention) to a user's activity feed, once."""
    activity_list.add_activity(user_id, kind, actor_id, event_id, photo_id)


@farm_task("batch.feed_trim", max_retries=0)
def feed_trim() -> Result:
    return run_job(jobs.FEED_TRIM, data_redis(), get_settings())


@farm_task("batch.fanout_sweep", max_retries=0)
def fanout_sweep() -> Result:
    return run_job(jobs.FANOUT_SWEEP, data_redis(), get_settings())


@farm_task("batch.feed_rebuild", max_retries=0, permanent=(ValueError,))
def feed_rebuild(user_ids: list[int]) -> Result:
    """On demand only (beat never sends it): the same run as `farm batch feed-rebuild ID ...`."""
    return run_job(jobs.FEED_REBUILD, data_redis(), get_settings(), users=user_ids)

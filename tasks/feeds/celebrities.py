"""Celebrity fan-out on read: an owner with FARM_CELEBRITY_FOLLOWERS followers or more is not
fanned out on write; their posts stay in their posts list only, and each follower's feed read
merges them in (FeedStore.feed_page).

Why: fan-out on write costs one feed write per follower per post, seconds of the farm's work for
a million followers and minutes for ten million, while a post by such an owner should be readable
at once. Reading costs each reader one script on the data Redis: the celebrities they follow
(ZINTER of their following set with the merge set, which is small) and, per such owner, a binary
search and one LRANGE of a list of at most FARM_POSTS_CAP ids.

Crossing the line either way duplicates nothing: a read merges by photo id, so a post both in a
feed (fanned out before the owner crossed up) and in the posts list shows once. An owner who falls
below half the line is fanned out on write again from their next post, and stays in the merge set
until every post left in their list is one that was fanned out (celebrities.lua keeps the first
such post's id), so the posts made while they were a celebrity never vanish from feeds.

Key layout and the scripts: celebrities.lua. Like fanout.lua, the read script builds posts keys
from a prefix (standalone servers only, not Redis Cluster).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from config.settings import get_settings
from tasks.core.scripts import Script

if TYPE_CHECKING:
    from redis.client import Pipeline

    from tasks.feeds.store import FeedStore

CELEBRITIES = Script(__package__, "celebrities.lua")


def is_celebrity_post(store: FeedStore, owner_id: int, photo_id: int) -> tuple[bool, int]:
    """(True when this post is fanned out on read, not on write; the owner's follower count).
    Run at each post, after it is in the owner's posts list; moves the owner across the line
    (with the step-down at half of it)."""
    on_read, followers = CELEBRITIES(
        store.graph, [store.celebrities, store.celebrities_read, store.posts_key(owner_id),
                      store.followers_key(owner_id)],
        ["classify", owner_id, get_settings().celebrity_followers, photo_id])
    return bool(on_read), int(followers)


def merged_posts(store: FeedStore, uid: int, limit: int, before: str,
                 pipe: Pipeline | None = None) -> Any:
    """The newest ``limit`` posts (ids as strings, newest first) older than ``before`` ('' for
    the newest) among the merged owners ``uid`` follows. Queued as a bare EVALSHA on ``pipe``
    (a pipeline of the data Redis) if given: the caller loads the script on NoScriptError."""
    keys = [store.following_key(uid), store.celebrities_read]
    args = ["posts", f"{store.s.key_prefix}:posts:", limit, before]
    if pipe is not None:
        CELEBRITIES.queue(pipe, keys, args)
        return None
    return CELEBRITIES(store.graph, keys, args)


def load_scripts(store: FeedStore) -> None:
    """Load the read script on the data Redis (after a NoScriptError: the server restarted)."""
    CELEBRITIES.load(store.graph)


def read_now(store: FeedStore, owner_id: int) -> bool:
    """Whether the owner is fanned out on read now (a follow needs no backfill of theirs)."""
    return bool(store.graph.hget(store.celebrities, str(owner_id)) == "on")


def celebrities(store: FeedStore) -> dict[int, str]:
    """Owner -> "on" (fanned out on read now) or the first post fanned out on write again."""
    raw: dict[str, str] = store.graph.hgetall(store.celebrities)  # type: ignore[assignment]
    return {int(owner): state for owner, state in raw.items()}

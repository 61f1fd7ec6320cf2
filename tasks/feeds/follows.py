"""Follows and unfollows: the followee's newest posts merged into the follower's feed, or taken
out of it. Each write is one script on the follower's feed shard (lists.lua), atomic against
fan-out's own; each looks at the graph again after its write, so a follow or unfollow landing
meanwhile leaves nothing wrong. Both are safe to run twice."""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

from config.settings import get_settings
from tasks.core.scripts import Script
from tasks.feeds import celebrities
from tasks.feeds.store import FeedStore, feed_store

LISTS = Script(__package__, "lists.lua")  # entries: backfill, remove, rebuild


def newest_first(raw: Iterable[str]) -> list[str]:
    """Decimal photo ids, deduplicated and sorted newest first; anything else is skipped, since a
    non-numeric member would break the scripts' comparison."""
    ids = {int(x) for x in raw if x.isascii() and x.isdigit()}
    return [str(x) for x in sorted(ids, reverse=True)]


def backfill(follower_id: int, followee_id: int, *, recheck: bool = True) -> int:
    """Merge the followee's newest posts into the follower's feed; returns how many were added.

    A no-op unless the follow still stands: an unfollow processed before this (tasks on a queue
    may run out of order) must not be undone by it. An unfollow landing while this runs is
    caught by looking again after the write (the web tier changes the graph before it enqueues
    user_unfollowed, so a removal that ran before the write sees the graph changed too).
    """
    s = get_settings()
    store = feed_store(s)
    if not _follows(store, follower_id, followee_id) or celebrities.read_now(store, followee_id):
        return 0  # unfollowed since; or a celebrity, whose posts every read merges in
    posts = newest_first(cast("list[str]", store.graph.lrange(store.posts_key(followee_id), 0,
                                                              s.feed_backfill - 1)))
    if not posts:
        return 0
    shard = store.shard_for(follower_id)
    added = int(LISTS(shard, [store.feed_key(follower_id)],
                      ["backfill", s.feed_cap, store.tombstone_key(""), *posts]))
    if recheck and not _follows(store, follower_id, followee_id):
        remove_followee(follower_id, followee_id, recheck=False)
        return 0
    return added


def remove_followee(follower_id: int, followee_id: int, *, recheck: bool = True) -> int:
    """Take the followee's posts out of the follower's feed; returns how many were removed.

    A no-op if the follower follows them again by now (a later follow's backfill may have run);
    a follow landing while this runs is caught by looking again after the removal.
    """
    s = get_settings()
    store = feed_store(s)
    if _follows(store, follower_id, followee_id):
        return 0
    posts = newest_first(cast("list[str]", store.graph.lrange(store.posts_key(followee_id), 0,
                                                              s.posts_cap - 1)))
    if not posts:
        return 0
    shard = store.shard_for(follower_id)
    removed = int(LISTS(shard, [store.feed_key(follower_id)], ["remove", *posts]))
    if recheck and _follows(store, follower_id, followee_id):
        backfill(follower_id, followee_id, recheck=False)
        return 0
    return removed


def _follows(store: FeedStore, follower_id: int, followee_id: int) -> bool:
    return store.graph.zscore(store.following_key(follower_id), str(followee_id)) is not None

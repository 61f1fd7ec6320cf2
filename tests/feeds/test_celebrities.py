"""Celebrity fan-out on read, against real Redis servers: an owner over the line is not fanned
out on write, and every follower's feed read merges their posts in order, capped, never twice,
as the owner crosses the line either way."""

from __future__ import annotations

import pytest
import redis

from tasks.feeds.celebrities import celebrities
from tasks.feeds.deletes import delete_photo
from tasks.feeds.fanout import fan_out
from tasks.feeds.follows import backfill
from tasks.feeds.store import FeedStore, feed_store
from tests.feeds.test_fanout import add_followers, configure, photo, run_queued
from tests.support.broker_queues import BrokerQueues

pytestmark = pytest.mark.integration

STAR, PLAIN = 1, 2  # a celebrity-to-be and an ordinary owner
FANS = list(range(100, 112))  # 12 followers of the star; the line is 10 in these tests


def post(store: FeedStore, queues: BrokerQueues, n: int, owner: int) -> dict[str, object]:
    """Post photo n as the farm does: fan_out, then every chunk it sent, run in order."""
    summary = fan_out(photo(n), owner)
    run_queued(queues, "feeds")
    run_queued(queues, "feeds_batch")
    return summary


def unfollow_all(store: FeedStore, owner: int, uids: list[int]) -> None:
    for uid in uids:
        store.unfollow(uid, owner)


@pytest.fixture(params=["sharded", "one server"])
def feeds(request: pytest.FixtureRequest, data: redis.Redis,
          monkeypatch: pytest.MonkeyPatch) -> FeedStore:
    if request.param == "sharded":
        request.getfixturevalue("sharded")
    configure(monkeypatch, celebrity_followers=10, feed_chunk_size=5)
    store = feed_store()
    assert len(store.shards) == (3 if request.param == "sharded" else 1)
    return store


def test_a_celebrity_post_is_read_not_written_and_merges_in_order(
        feeds: FeedStore, queues: BrokerQueues) -> None:
    add_followers(feeds, STAR, FANS)
    add_followers(feeds, PLAIN, FANS[:4])
    post(feeds, queues, 1, PLAIN)
    summary = post(feeds, queues, 2, STAR)
    assert summary == {"deleted": False, "followers": 12, "chunks": 0, "on_read": True}
    assert queues.depth("feeds") == 0 and queues.depth("feeds_batch") == 0  # no chunk at all
    post(feeds, queues, 3, PLAIN)
    assert celebrities(feeds) == {STAR: "on"}
    # Readable by every follower at once, in id order with the fanned-out posts.
    assert feeds.feed_page(FANS[0]) == [photo(3), photo(2), photo(1)]
    assert all(feeds.feed_page(u) == [photo(2)] for u in FANS[4:])
    assert feeds.feed_page(999) == []  # not a follower
    assert feeds.feed_page(STAR) == [photo(2)]  # the owner's own feed, written as always
    # Never written into a follower's feed list: the read merged it.
    shard = feeds.shard_for(FANS[5])
    assert shard.lrange(feeds.feed_key(FANS[5]), 0, -1) == []
    # Unfollowing takes it out of the next read; following puts it in.
    feeds.unfollow(FANS[5], STAR)
    assert feeds.feed_page(FANS[5]) == []
    feeds.follow(FANS[5], STAR)
    assert backfill(FANS[5], STAR) == 0  # user_followed's job: nothing to copy, reads merge
    assert feeds.feed_page(FANS[5]) == [photo(2)]
    assert shard.lrange(feeds.feed_key(FANS[5]), 0, -1) == []
    # A server restarted without its scripts: the read loads the merge script and goes on.
    feeds.graph.script_flush()
    assert feeds.feed_page(FANS[0]) == [photo(3), photo(2), photo(1)]


def test_pages_through_a_merged_feed_with_a_cursor_and_a_cap(
        feeds: FeedStore, queues: BrokerQueues, monkeypatch: pytest.MonkeyPatch) -> None:
    add_followers(feeds, STAR, FANS)
    add_followers(feeds, PLAIN, FANS[:1])
    for n in range(1, 21):
        post(feeds, queues, n, STAR if n % 3 else PLAIN)
    everything = [photo(n) for n in range(20, 0, -1)]
    assert feeds.feed_page(FANS[0], limit=50) == everything
    pages, before = [], None
    while page := feeds.feed_page(FANS[0], limit=4, before_id=before):
        pages.extend(page)
        before = page[-1]
    assert pages == everything  # no post twice, none skipped, across both kinds of cursor
    # A full feed shows nothing older than its oldest entry, as if those had been trimmed.
    configure(monkeypatch, celebrity_followers=10, feed_chunk_size=5, feed_cap=3)
    for n in range(21, 25):
        post(feeds, queues, n, PLAIN)  # the plain owner's feed list: 24, 23, 22 (capped)
    assert feeds.feed_page(FANS[0], limit=50) == [photo(24), photo(23), photo(22)]
    post(feeds, queues, 25, STAR)
    assert feeds.feed_page(FANS[0], limit=50) == [photo(25), photo(24), photo(23), photo(22)]


def test_crossing_the_line_either_way_shows_each_post_once(
        feeds: FeedStore, queues: BrokerQueues, monkeypatch: pytest.MonkeyPatch) -> None:
    configure(monkeypatch, celebrity_followers=10, feed_chunk_size=5, posts_cap=4)
    fan = FANS[0]
    add_followers(feeds, STAR, FANS[:6])
    assert "on_read" not in post(feeds, queues, 1, STAR)  # 6 followers: written
    add_followers(feeds, STAR, FANS[6:])
    assert post(feeds, queues, 2, STAR)["on_read"] is True  # 12: read; 1 is in both places
    assert feeds.feed_page(fan) == [photo(2), photo(1)]
    unfollow_all(feeds, STAR, FANS[6:9])  # 9 followers: under the line, not under half of it
    assert post(feeds, queues, 3, STAR)["on_read"] is True
    unfollow_all(feeds, STAR, FANS[9:])  # 6: still over half (5)
    assert post(feeds, queues, 4, STAR)["on_read"] is True
    unfollow_all(feeds, STAR, FANS[5:6])  # 5 followers, half the line: stays
    assert post(feeds, queues, 5, STAR)["on_read"] is True
    unfollow_all(feeds, STAR, FANS[4:5])  # 4: below half, written again from this post on
    assert "on_read" not in post(feeds, queues, 6, STAR)
    assert celebrities(feeds) == {STAR: str(photo(6))}
    # 2-5 only in the posts list, 1 and 6 in the feed too: each once.
    assert feeds.feed_page(fan) == [photo(n) for n in (6, 5, 4, 3, 1)]
    assert feeds.shard_for(fan).lrange(feeds.feed_key(fan), 0, -1) == [str(photo(6)),
                                                                       str(photo(1))]
    post(feeds, queues, 7, STAR)
    assert celebrities(feeds) == {STAR: str(photo(6))}  # 5 and 4 still only in the list
    assert feeds.feed_page(fan) == [photo(n) for n in (7, 6, 5, 4, 1)]  # posts_cap 4: 3 gone
    post(feeds, queues, 8, STAR)
    post(feeds, queues, 9, STAR)  # the list now holds 9-6, all written: out of the merge set
    assert celebrities(feeds) == {}
    assert feeds.feed_page(fan) == [photo(n) for n in (9, 8, 7, 6, 1)]
    # Over the line again: read again, nothing twice.
    add_followers(feeds, STAR, FANS[4:])
    assert post(feeds, queues, 10, STAR)["on_read"] is True
    assert feeds.feed_page(fan) == [photo(n) for n in (10, 9, 8, 7, 6, 1)]


def test_a_deleted_celebrity_post_leaves_every_read(
        feeds: FeedStore, queues: BrokerQueues) -> None:
    add_followers(feeds, STAR, FANS)
    post(feeds, queues, 1, STAR)
    post(feeds, queues, 2, STAR)
    delete_photo(photo(2), STAR)
    assert all(feeds.feed_page(u) == [photo(1)] for u in FANS)
    assert fan_out(photo(2), STAR)["deleted"] is True  # a redelivered fan-out stays out too
    assert feeds.feed_page(FANS[0]) == [photo(1)]

"""Feed upkeep against real feed shards: backfill, unfollow, delete, rebuild, activity, feed-trim,
and the enqueue functions that start them."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from config.settings import get_settings
from schedules.batch import JOBS
from tasks import enqueue
from tasks.core.errors import PermanentError
from tasks.core.ids import make_id
from tasks.core.jobs import run_job
from tasks.core.validation import MAX_USER_ID, check
from tasks.feeds import activity, deletes, fanout, follows, rebuild, trim
from tasks.feeds.store import FeedStore, feed_store
from tests.support.broker_queues import BrokerQueues
from tests.support.workers import WorkerFactory, wait_for

DAY_MS = 86_400_000
NOW_MS = int(time.time() * 1000)


def pid(minutes_ago: float, seq: int = 0) -> int:
    """A photo id made that long ago: ids sort by time."""
    return make_id(NOW_MS - int(minutes_ago * 60_000), 0, seq)


def configure(monkeypatch: pytest.MonkeyPatch, **values: int) -> None:
    """Settings for this process; the sharded fixture undoes the environment afterwards."""
    for name, value in values.items():
        monkeypatch.setenv(f"FARM_{name.upper()}", str(value))
    get_settings.cache_clear()


def queued(queues: BrokerQueues, queue: str) -> list[dict[str, Any]]:
    """Messages waiting in a queue, newest first, decoded."""
    return queues.envelopes(queue)[::-1]


@pytest.fixture
def store(sharded: dict[str, str]) -> FeedStore:
    return feed_store()


def feed(store: FeedStore, uid: int) -> list[int]:
    return [int(x) for x in store.shard_for(uid).lrange(store.feed_key(uid), 0, -1)]


def set_feed(store: FeedStore, uid: int, ids: list[int]) -> None:
    key, shard = store.feed_key(uid), store.shard_for(uid)
    shard.delete(key)
    if ids:
        shard.rpush(key, *sorted(ids, reverse=True))


def set_posts(store: FeedStore, uid: int, ids: list[int]) -> None:
    store.graph.delete(store.posts_key(uid))
    store.graph.rpush(store.posts_key(uid), *sorted(ids, reverse=True))


def spread(store: FeedStore, count: int, start: int = 100) -> list[int]:
    """``count`` user ids from ``start`` on, checked to cover every shard."""
    uids = list(range(start, start + count))
    assert set(store.by_shard(uids)) == {0, 1, 2}
    return uids


# --- backfill -----------------------------------------------------------------------------------

def test_backfill_merges_in_id_order_caps_dedups_and_is_idempotent(
        store: FeedStore, monkeypatch: pytest.MonkeyPatch) -> None:
    configure(monkeypatch, feed_cap=6, feed_backfill=4)
    follower, followee = 11, 12
    store.follow(follower, followee)
    posts = [pid(m) for m in (10, 30, 50, 70, 90)]  # the oldest is past feed_backfill
    existing = [pid(20), pid(50), pid(60), pid(200)]  # pid(50) is also one of the posts
    set_posts(store, followee, posts)
    set_feed(store, follower, existing)

    added = follows.backfill(follower, followee)

    merged = sorted(set(existing) | set(posts[:4]), reverse=True)
    assert feed(store, follower) == merged[:6]
    assert added == 3  # 10, 30, 70 minutes ago; pid(50) was there, 200 fell off the cap
    assert follows.backfill(follower, followee) == 0
    assert feed(store, follower) == merged[:6]


def test_backfill_is_a_no_op_without_the_follow_or_the_posts(store: FeedStore) -> None:
    set_posts(store, 12, [pid(5)])
    set_feed(store, 11, [pid(1)])
    assert follows.backfill(11, 12) == 0  # the graph says 11 does not follow 12 (any more)
    assert feed(store, 11) == [pid(1)]
    store.follow(21, 22)  # 22 has never posted
    assert follows.backfill(21, 22) == 0
    assert not store.shard_for(21).exists(store.feed_key(21))


def test_backfill_racing_fan_out_leaves_no_duplicate(store: FeedStore) -> None:
    follower, owner = 31, 32
    store.follow(follower, owner)
    old, mid, new = pid(30), pid(20), pid(10)
    set_posts(store, owner, [old, mid])
    # The fan-out's chunk write lands first, then the backfill that also has it in the posts.
    assert fanout.write_chunk(mid, owner, 0, 1000, False) == 1
    assert follows.backfill(follower, owner) == 1
    # Then fan-outs landing after the backfill: a newer photo, and a replay of one it brought.
    set_posts(store, owner, [old, mid, new])
    assert fanout.write_chunk(new, owner, 0, 1000, False) == 1
    assert fanout.write_chunk(old, owner, 0, 500, False) == 0
    assert follows.backfill(follower, owner) == 0
    assert feed(store, follower) == [new, mid, old]


# --- follow and unfollow landing while the other runs ----------------------------------------
# The web tier changes the graph, then enqueues the job; each job looks at the graph again after
# its write, so neither order of two racing jobs leaves the feed wrong.

def test_an_unfollow_landing_mid_chunk_leaves_no_post_behind(
        store: FeedStore, monkeypatch: pytest.MonkeyPatch) -> None:
    owner, p = 51, pid(1)
    for uid in (61, 62, 63):
        store.follow(uid, owner)
    write = fanout._write_feeds

    def unfollow_then_write(*args: Any, **kwargs: Any) -> int:
        # 62 unfollows after the chunk's select, and that removal ran before the chunk's write.
        store.unfollow(62, owner)
        follows.remove_followee(62, owner)
        return write(*args, **kwargs)

    monkeypatch.setattr(fanout, "_write_feeds", unfollow_then_write)
    assert fanout.write_chunk(p, owner, 60, 70, False) == 2
    assert [feed(store, u) for u in (61, 62, 63)] == [[p], [], [p]]


def test_an_unfollow_landing_mid_backfill_leaves_no_post_behind(
        store: FeedStore, monkeypatch: pytest.MonkeyPatch) -> None:
    follower, followee, posts = 71, 72, [pid(3), pid(2)]
    store.follow(follower, followee)
    set_posts(store, followee, posts)
    newest_first = follows.newest_first

    def unfollow_meanwhile(raw: Any) -> list[str]:
        store.unfollow(follower, followee)  # after backfill's check; its removal runs first
        monkeypatch.setattr(follows, "newest_first", newest_first)
        follows.remove_followee(follower, followee)
        return newest_first(raw)

    monkeypatch.setattr(follows, "newest_first", unfollow_meanwhile)
    assert follows.backfill(follower, followee) == 0
    assert feed(store, follower) == []


def test_a_follow_landing_mid_unfollow_keeps_the_posts(
        store: FeedStore, monkeypatch: pytest.MonkeyPatch) -> None:
    follower, followee, posts = 81, 82, [pid(3), pid(2)]
    set_posts(store, followee, posts)
    set_feed(store, follower, posts)
    newest_first = follows.newest_first

    def follow_meanwhile(raw: Any) -> list[str]:
        store.follow(follower, followee)  # after the removal's check; its backfill runs first
        monkeypatch.setattr(follows, "newest_first", newest_first)
        follows.backfill(follower, followee)
        return newest_first(raw)

    monkeypatch.setattr(follows, "newest_first", follow_meanwhile)
    assert follows.remove_followee(follower, followee) == 0
    assert feed(store, follower) == sorted(posts, reverse=True)


# --- unfollow -----------------------------------------------------------------------------------

def test_unfollow_removes_only_the_followees_posts(store: FeedStore) -> None:
    follower, gone, kept = 41, 42, 43
    gone_posts, kept_posts = [pid(5), pid(15), pid(25)], [pid(10), pid(20)]
    set_posts(store, gone, [*gone_posts, pid(40)])  # pid(40) never reached this feed
    set_posts(store, kept, kept_posts)
    set_feed(store, follower, gone_posts + kept_posts)
    store.follow(follower, kept)

    assert follows.remove_followee(follower, gone) == 3
    assert feed(store, follower) == kept_posts
    assert follows.remove_followee(follower, gone) == 0  # safe to run twice
    # Following again by the time the unfollow runs: a later follow's backfill must stand.
    assert follows.remove_followee(follower, kept) == 0
    assert feed(store, follower) == kept_posts
    assert follows.remove_followee(follower, 999) == 0  # never posted
    assert follows.remove_followee(998, gone) == 0  # no feed at all
    assert not store.shard_for(998).exists(store.feed_key(998))


# --- delete -------------------------------------------------------------------------------------

def seed_delete(store: FeedStore, owner: int, followers: list[int]) -> tuple[int, int]:
    """The owner's photo in its posts, the owner's feed and every follower's (beside another)."""
    photo, other = pid(3), pid(4)
    set_posts(store, owner, [photo, other])
    for uid in followers:
        store.follow(uid, owner)
    for uid in [owner, *followers]:
        set_feed(store, uid, [photo, other, pid(60)])
    return photo, other


def test_delete_chunks_cover_every_follower_on_every_shard(
        store: FeedStore, queues: BrokerQueues, monkeypatch: pytest.MonkeyPatch) -> None:
    configure(monkeypatch, feed_chunk_size=3)
    owner, followers = 7, spread(store, 10)
    photo, other = seed_delete(store, owner, followers)
    set_feed(store, 999, [photo])  # not a follower: never walked

    assert deletes.delete_photo(photo, owner) == {"photo_id": photo, "followers": 10, "chunks": 4}

    messages = queued(queues, "feeds_batch")
    assert {m["task"] for m in messages} == {"feeds.delete_chunk"}
    edges = sorted((m["kwargs"]["lo"], m["kwargs"]["hi"]) for m in messages)
    assert edges == [(0, 102), (102, 105), (105, 108), (108, MAX_USER_ID)]
    assert store.graph.lrange(store.posts_key(owner), 0, -1) == [str(other)]
    assert feed(store, owner) == [other, pid(60)]
    removed = [deletes.delete_chunk(**m["kwargs"]) for m in messages]
    assert sum(removed) == 10
    assert all(feed(store, uid) == [other, pid(60)] for uid in followers)
    assert feed(store, 999) == [photo]
    assert [deletes.delete_chunk(**m["kwargs"]) for m in messages] == [0, 0, 0, 0]  # safe twice
    # The tombstone is on the data Redis and every shard, where fan-out checks it.
    tomb = f"{get_settings().key_prefix}:deleted:{photo}"
    assert all(c.ttl(tomb) > 0 for c in [store.graph, *store.shards])


def test_delete_of_an_unknown_owner_or_without_followers_is_a_clean_no_op(
        store: FeedStore, queues: BrokerQueues) -> None:
    assert deletes.delete_photo(pid(1), 4242) == {"photo_id": pid(1), "followers": 0, "chunks": 0}
    assert queued(queues, "feeds_batch") == []
    assert deletes.delete_chunk(pid(1), 4242, 0, 100) == 0


@pytest.mark.integration
def test_delete_and_rebuild_on_a_real_batch_worker_and_fan_out_cannot_bring_it_back(
        store: FeedStore, workers: WorkerFactory, sharded: dict[str, str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    configure(monkeypatch, feed_chunk_size=2)  # the worker inherits the environment
    owner, followers = 8, spread(store, 7, start=205)
    photo, other = seed_delete(store, owner, followers)
    reader = followers[0]
    set_feed(store, reader, [pid(500)])  # stale: the rebuild below replaces it
    worker = workers("batch", env=sharded)

    enqueue.photo_deleted(photo, owner)
    enqueue.rebuild_feed(reader)

    wait_for(lambda: not any(str(photo) in store.shard_for(u).lrange(store.feed_key(u), 0, -1)
                             for u in [owner, *followers]), what="the photo out of every feed")
    wait_for(lambda: feed(store, reader) == [other], what="the reader's feed rebuilt")
    assert all(feed(store, uid) == [other, pid(60)] for uid in followers[1:])
    wait_for(lambda: worker.log().count("task=feeds.delete_chunk") == 4,
             what="7 followers in chunks of 2: 4 delete_chunk tasks")
    # A fan-out of the deleted photo, late or replayed, writes nothing anywhere.
    assert fanout.fan_out(photo, owner)["deleted"] is True
    assert fanout.write_chunk(photo, owner, 0, MAX_USER_ID, False) == 0
    assert follows.backfill(followers[1], owner) == 0
    assert feed(store, owner) == [other, pid(60)]


def test_upkeep_on_the_data_redis_alone(data: redis.Redis, queues: BrokerQueues) -> None:
    """No FARM_FEED_SHARDS (the demo's default): feeds live beside the graph."""
    store = feed_store()
    assert store.shards == [store.graph]
    store.follow(91, 92)
    photo, other = pid(2), pid(5)
    set_posts(store, 92, [photo, other])
    assert follows.backfill(91, 92) == 2
    assert deletes.delete_photo(photo, 92)["chunks"] == 1
    [msg] = queued(queues, "feeds_batch")
    assert deletes.delete_chunk(**msg["kwargs"]) == 1
    assert feed(store, 91) == [other]
    assert trim.trim_feeds(data, get_settings()) == {"shards": 1, "feeds": 1, "trimmed": 0,
                                                    "dropped": 0}


# --- rebuild ------------------------------------------------------------------------------------

def test_rebuild_merges_the_followees_newest_posts_and_keeps_what_lands_meanwhile(
        store: FeedStore, monkeypatch: pytest.MonkeyPatch) -> None:
    configure(monkeypatch, feed_cap=8, feed_backfill=3)
    user, a, b, c = 51, 52, 53, 54
    store.follow(user, a)
    store.follow(user, b)
    a_posts = [pid(m) for m in (100, 200, 300, 400)]  # the oldest is past feed_backfill
    b_posts = [pid(m) for m in (150, 250)]
    own = [pid(120)]
    deleted = pid(110)
    set_posts(store, a, [*a_posts, deleted])
    set_posts(store, b, b_posts)
    set_posts(store, user, own)
    set_posts(store, c, [pid(130)])  # no longer followed
    store.graph.set(f"{get_settings().key_prefix}:deleted:{deleted}", "1")
    fresh = make_id(int(time.time() * 1000), 1, 0)  # fanned out just now, in no posts list yet
    set_feed(store, user, [pid(130), pid(400), fresh, deleted])
    # A slow photo (made an hour ago) whose fan-out lands while the rebuild reads the posts.
    late = pid(60, seq=5)
    real_recent = rebuild._recent_posts

    def racing(*args: Any) -> Iterator[str]:
        assert fanout.write_chunk(late, a, 0, 1000, False) == 1
        yield from real_recent(*args)

    monkeypatch.setattr(rebuild, "_recent_posts", racing)

    # a's newest three are 100, 110 (deleted) and 200 minutes old; c is no longer followed.
    expected = sorted([fresh, late, *a_posts[:2], *b_posts, *own], reverse=True)
    assert rebuild.rebuild_feed(user) == 7
    assert feed(store, user) == expected
    # Run again: the fresh entry is still recent, so it stays; the late one is in no posts list
    # (a real fan-out writes it there before any feed), so now it goes.
    monkeypatch.setattr(rebuild, "_recent_posts", real_recent)
    assert rebuild.rebuild_feed(user) == 6
    assert feed(store, user) == [x for x in expected if x != late]


def test_rebuild_caps_and_of_an_unknown_user_is_a_clean_no_op(
        store: FeedStore, monkeypatch: pytest.MonkeyPatch) -> None:
    configure(monkeypatch, feed_cap=3)
    store.follow(61, 62)
    set_posts(store, 62, [pid(m) for m in range(10, 20)])
    assert rebuild.rebuild_feed(61) == 3
    assert feed(store, 61) == [pid(10), pid(11), pid(12)]
    assert rebuild.rebuild_feed(6161) == 0
    assert not store.shard_for(6161).exists(store.feed_key(6161))


# --- activity -----------------------------------------------------------------------------------

def test_activity_is_added_once_per_event_and_capped(
        store: FeedStore, monkeypatch: pytest.MonkeyPatch) -> None:
    configure(monkeypatch, activity_cap=3)
    user = 71
    before = int(time.time())
    assert activity.add_activity(user, "like", 72, "ev1", pid(1)) is True
    assert activity.add_activity(user, "like", 72, "ev1", pid(1)) is False  # a redelivery
    [entry] = store.activity_page(user)
    assert json.loads(entry) == {"kind": "like", "actor": 72, "photo": pid(1), "event": "ev1",
                                 "at": json.loads(entry)["at"]}
    assert before <= json.loads(entry)["at"] <= time.time()
    marker = f"{store.activity_key(user)}:seen:ev1"
    assert 0 < store.shard_for(user).ttl(marker) <= get_settings().marker_ttl
    for n in range(2, 6):
        assert activity.add_activity(user, "follow", 70 + n, f"ev{n}", None)
    assert [json.loads(e)["event"] for e in store.activity_page(user, 10)] == ["ev5", "ev4", "ev3"]


# --- feed-trim ----------------------------------------------------------------------------------

def test_feed_trim_trims_only_over_cap_feeds_on_every_shard(
        store: FeedStore, monkeypatch: pytest.MonkeyPatch) -> None:
    configure(monkeypatch, feed_cap=4)
    s = get_settings()
    long_ones, short_ones = spread(store, 6, start=300), spread(store, 6, start=401)
    for i, uid in enumerate(long_ones):
        set_feed(store, uid, [pid(m) for m in range(6 + i)])
    for uid in short_ones:
        set_feed(store, uid, [pid(m) for m in range(uid % 5)])  # 0 to 4 entries
    other = store.shard_for(1)
    other.rpush(store.activity_key(1), *range(9))  # not a feed
    other.set(store.feed_key(2), "a string")  # not a list: not ours to touch
    calls: list[tuple[str, int, int | None]] = []

    result = trim.trim_feeds(store.graph, s, lambda *call: calls.append(call))

    feeds = len(long_ones) + sum(1 for u in short_ones if u % 5)
    assert result == {"shards": 3, "feeds": feeds, "trimmed": 6,
                      "dropped": sum(2 + i for i in range(6))}
    assert all(feed(store, uid) == [pid(m) for m in range(4)] for uid in long_ones)
    assert all(len(feed(store, uid)) == uid % 5 for uid in short_ones)
    assert other.llen(store.activity_key(1)) == 9
    assert calls[-1] == ("feeds", feeds, feeds)
    assert trim.trim_feeds(store.graph, s)["trimmed"] == 0


@pytest.mark.skipif("feed-trim" not in JOBS, reason="feed-trim not registered yet: needs its "
                    "route and task (see the feed upkeep report)")
def test_feed_trim_runs_as_a_batch_job(store: FeedStore, data: redis.Redis,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    configure(monkeypatch, feed_cap=2)
    set_feed(store, 5, [pid(1), pid(2), pid(3)])
    result = run_job(JOBS["feed-trim"].job, data, get_settings())
    assert result["status"] == "done" and result["trimmed"] == 1
    assert JOBS["feed-trim"].period.total_seconds() == 86400


# --- enqueue and validation ---------------------------------------------------------------------

def test_activity_and_rebuild_enqueue_send_by_name(data: redis.Redis,
                                                   queues: BrokerQueues) -> None:
    first = enqueue.activity(1, "like", 2, photo_id=3)
    enqueue.activity(1, "follow", 2)
    rebuild = enqueue.rebuild_feed(9)
    [follow_msg, like_msg] = queued(queues, "feeds")  # the queue list is newest first
    assert like_msg["task"] == "feeds.activity" and like_msg["id"] == first
    event = like_msg["kwargs"].pop("event_id")
    assert len(event) == 32 and int(event, 16) >= 0
    assert like_msg["kwargs"] == {"user_id": 1, "kind": "like", "actor_id": 2, "photo_id": 3}
    assert follow_msg["kwargs"]["event_id"] != event  # a new event each call
    assert queued(queues, "feeds_batch") == [{"task": "feeds.rebuild", "id": rebuild, "args": [],
                                             "kwargs": {"user_id": 9}}]


@pytest.mark.parametrize(("call", "message"), [
    (lambda: enqueue.activity(1, "poke", 2), "kind: must be one of"),
    (lambda: enqueue.activity(1, ["like"], 2, 3), "kind: must be one of"),
    (lambda: enqueue.activity(1, "like", 2), "photo_id: a like activity needs the photo"),
    (lambda: enqueue.activity(1, "follow", 2, 3), "photo_id: a follow activity is about no photo"),
    (lambda: enqueue.activity(True, "mention", 2), "user_id: must be an integer"),
    (lambda: enqueue.activity(1, "comment", 0, 3), "actor_id: must be between"),
    (lambda: enqueue.activity(1, "comment", 2, "3"), "photo_id: must be an integer"),
    (lambda: enqueue.rebuild_feed(-5), "user_id: must be between"),
    (lambda: enqueue.rebuild_feed(2**63), "user_id: must be between"),
])
def test_bad_enqueue_arguments_are_refused_before_sending(
        call: Any, message: str, data: redis.Redis, queues: BrokerQueues) -> None:
    with pytest.raises(ValueError, match=message):
        call()
    assert not queues.depth("feeds") and not queues.depth("feeds_batch")


@pytest.mark.parametrize(("task", "kwargs"), [
    ("feeds.follow", {"follower_id": "1", "followee_id": 2}),
    ("feeds.follow", {"follower_id": 1, "followee_id": True}),
    ("feeds.unfollow", {"follower_id": 0, "followee_id": 2}),
    # user ids are exact scores only below 2**53
    ("feeds.unfollow", {"follower_id": 1, "followee_id": 2**53}),
    ("feeds.photo_deleted", {"photo_id": -1, "owner_id": 2}),
    ("feeds.photo_deleted", {"photo_id": 2**63, "owner_id": 2}),
    ("feeds.photo_deleted", {"photo_id": 1.0, "owner_id": 2}),
    ("feeds.delete_chunk", {"photo_id": 1, "owner_id": 2, "lo": -1, "hi": 5}),
    ("feeds.delete_chunk", {"photo_id": 1, "owner_id": 2, "lo": False, "hi": 5}),
    ("feeds.delete_chunk", {"photo_id": 1, "owner_id": 2, "lo": 0, "hi": None}),
    ("feeds.rebuild", {"user_id": None}),
    ("feeds.activity", {"user_id": 1, "kind": "poke", "actor_id": 2, "event_id": "ev"}),
    ("feeds.activity", {"user_id": 1, "kind": "like", "actor_id": 2, "event_id": "ev"}),
    ("feeds.activity", {"user_id": 1, "kind": "mention", "actor_id": 2, "event_id": "a:b"}),
    ("feeds.activity", {"user_id": 1, "kind": "mention", "actor_id": 2, "event_id": ""}),
    ("feeds.activity", {"user_id": 1, "kind": "mention", "actor_id": 2**53, "event_id": "ev"}),
])
def test_malformed_ids_are_rejected_for_good(task: str, kwargs: dict[str, Any],
                                            store: FeedStore) -> None:
    with pytest.raises(PermanentError):  # at the task's entry: nothing runs, nothing retries
        check(task, (), kwargs)
    assert all(c.dbsize() == 0 for c in [store.graph, *store.shards])  # nothing written

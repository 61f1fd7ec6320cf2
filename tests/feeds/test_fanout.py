"""Feed fan-out against real Redis servers: feeds spread over three shards, chunks run as plain
functions and through real workers, a chunk run twice, a worker SIGKILLed mid-fan-out."""

from __future__ import annotations

import json
import random
import time
from itertools import pairwise
from typing import Any

import pytest
import redis

from config.celery_app import app
from config.settings import get_settings
from tasks.core.errors import PermanentError
from tasks.core.ids import make_id
from tasks.core.validation import MAX_USER_ID, check
from tasks.feeds import fanout
from tasks.feeds.fanout import fan_out, write_chunk
from tasks.feeds.ledger import resend_stale
from tasks.feeds.sharding import jump_hash
from tasks.feeds.store import FeedStore, feed_store
from tests.support.broker_queues import BrokerQueues
from tests.support.workers import FAST_REDELIVERY, WorkerFactory, wait_for

OWNER = 1
T0 = int(time.time() * 1000) - 60_000  # photo ids minted a minute ago, one per millisecond


def photo(n: int) -> int:
    """The n-th photo id: time-sorted, so a larger n is a newer photo."""
    return make_id(T0 + n, 7, n % 1000)


def configure(monkeypatch: pytest.MonkeyPatch, **values: object) -> None:
    for name, value in values.items():
        monkeypatch.setenv(f"FARM_{name.upper()}", str(value))
    get_settings.cache_clear()


@pytest.fixture
def store(sharded: dict[str, str]) -> FeedStore:
    s = feed_store()
    assert len(s.shards) == 3
    return s


def add_followers(store: FeedStore, owner: int, uids: list[int]) -> None:
    pipe = store.graph.pipeline(transaction=False)
    for uid in uids:
        pipe.zadd(store.followers_key(owner), {str(uid): uid})
        pipe.zadd(store.following_key(uid), {str(owner): owner})
    pipe.execute()


def feeds(store: FeedStore, uids: list[int]) -> dict[int, list[int]]:
    """Every user's whole feed, read straight off the shard jump_hash puts them on."""
    out: dict[int, list[int]] = {}
    for index, members in store.by_shard(uids).items():
        pipe = store.shards[index].pipeline(transaction=False)
        for uid in members:
            pipe.lrange(store.feed_key(uid), 0, -1)
        out.update(zip(members, ([int(x) for x in r] for r in pipe.execute()), strict=True))
    return out


def queued(queues: BrokerQueues, queue: str) -> list[dict[str, Any]]:
    """The chunk tasks waiting in a queue, oldest first, left there."""
    messages = queues.messages(queue)
    assert {task for task, _ in messages} <= {"feeds.fanout_chunk"}
    return [kwargs for _, kwargs in messages]


def run_queued(queues: BrokerQueues, queue: str) -> list[int]:
    """Take a queue's chunk tasks and run them in order as plain calls (a burst runner)."""
    messages = queues.take(queue)
    assert {task for task, _ in messages} <= {"feeds.fanout_chunk"}
    return [write_chunk(**kwargs) for _, kwargs in messages]


# Plain functions against the real shards ------------------------------------------------------

@pytest.mark.integration
def test_fan_out_puts_each_post_once_in_every_feed_on_its_own_shard(
        store: FeedStore, queues: BrokerQueues, monkeypatch: pytest.MonkeyPatch) -> None:
    configure(monkeypatch, feed_chunk_size=40)
    followers = list(range(100, 400))
    add_followers(store, OWNER, followers)
    active = set(followers[::3])
    for uid in active:
        store.touch(uid)
    sent: list[tuple[str, bool]] = []
    original = app.send_task

    def spy(name: str, *args: Any, **kwargs: Any) -> Any:
        sent.append((kwargs["queue"], kwargs["kwargs"]["active"]))
        return original(name, *args, **kwargs)

    monkeypatch.setattr(app, "send_task", spy)

    summary = fan_out(photo(1), OWNER)
    assert summary == {"deleted": False, "followers": 300, "chunks": 8}
    # Every active chunk is sent before any inactive one.
    assert sent == [("feeds", True)] * 8 + [("feeds_batch", False)] * 8
    chunks = queued(queues, "feeds")
    edges = [(c["lo"], c["hi"]) for c in chunks]
    assert edges[0][0] == 0 and edges[-1][1] == MAX_USER_ID
    assert all(a[1] == b[0] for a, b in pairwise(edges))
    assert [hi for _, hi in edges[:-1]] == followers[39::40]  # boundaries are follower ids

    # The active pass alone reaches exactly the active followers.
    assert sum(run_queued(queues, "feeds")) == len(active)
    assert {u for u, f in feeds(store, followers).items() if f} == active
    run_queued(queues, "feeds_batch")

    for n in (2, 3):
        fan_out(photo(n), OWNER)
        run_queued(queues, "feeds")
        run_queued(queues, "feeds_batch")
    newest_first = [photo(3), photo(2), photo(1)]
    assert feeds(store, followers) == {u: newest_first for u in followers}
    assert all(store.feed_page(u) == newest_first for u in followers[:20])
    # The owner's own feed and posts list get the post as well.
    assert store.feed_page(OWNER) == newest_first
    assert [int(x) for x in store.graph.lrange(store.posts_key(OWNER), 0, -1)] == newest_first
    # Each feed lives only on the shard jump_hash names, and all three shards hold some.
    for i, shard in enumerate(store.shards):
        on_shard = {int(k.rsplit(":", 1)[1]) for k in shard.scan_iter(store.feed_key(0)[:-1] + "*")}
        assert on_shard == {u for u in [*followers, OWNER] if jump_hash(u, 3) == i}
        assert len(on_shard) > 50


@pytest.mark.integration
def test_on_the_data_redis_a_chunk_is_one_script_per_slice_the_last_setting_its_marker(
        data: redis.Redis, queues: BrokerQueues, monkeypatch: pytest.MonkeyPatch) -> None:
    configure(monkeypatch, feed_chunk_size=25)
    monkeypatch.setattr(fanout, "WRITE_SLICE", 5)
    store = feed_store()
    assert store.shards[0] is store.graph  # no FARM_FEED_SHARDS: one server for everything
    followers = list(range(10, 110))
    add_followers(store, OWNER, followers)
    for uid in followers[::2]:
        store.touch(uid, time.time() - 86400)
    p = photo(1)
    assert fan_out(p, OWNER)["chunks"] == 4
    active = queued(queues, "feeds")
    scanned = [sum(c["lo"] < u <= c["hi"] for u in followers) for c in active]
    data.config_resetstat()
    assert sum(run_queued(queues, "feeds")) == 50
    evalsha = data.info("commandstats")["cmdstat_evalsha"]  # a first NOSCRIPT fails, reloads
    # Per chunk, one select-and-write script per slice of 5 followers looked at, and one
    # crossing the chunk off the fan-out ledger.
    assert evalsha["calls"] - evalsha["failed_calls"] == sum(-(-n // 5) + 1 for n in scanned)
    assert {u for u, f in feeds(store, followers).items() if f} == set(followers[::2])
    # A crash before the last slice: the earlier slices' writes stand, no marker yet; the rerun
    # redoes every slice and duplicates nothing.
    chunk = active[0]
    marker = store.marker_key(p, f"{chunk['lo']}-{chunk['hi']}-a")
    assert data.exists(marker)
    data.delete(marker)
    assert write_chunk(**chunk) == 0 and data.exists(marker)
    assert {u for u, f in feeds(store, followers).items() if f} == set(followers[::2])
    chunks = queued(queues, "feeds_batch")
    assert sum(run_queued(queues, "feeds_batch")) == 50
    assert write_chunk(**chunks[0]) == -1
    data.set(store.s.key("deleted", photo(2)), 1)
    assert write_chunk(photo(2), OWNER, 0, MAX_USER_ID, False) == 0
    assert feeds(store, [*followers, OWNER]) == {u: [p] for u in [*followers, OWNER]}


@pytest.mark.integration
def test_on_feed_shards_a_chunk_is_one_select_then_pipelined_slices_per_shard(
        store: FeedStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fanout, "WRITE_SLICE", 3)
    followers = list(range(200, 240))
    add_followers(store, OWNER, followers)
    groups = store.by_shard(followers)
    assert len(groups) == 3 and min(map(len, groups.values())) > 3  # several slices per shard
    p = photo(1)
    assert write_chunk(p, OWNER, 0, 1000, False) == 40
    assert feeds(store, followers) == {u: [p] for u in followers}
    for index in groups:  # every shard's last slice set its marker
        assert store.shards[index].exists(store.marker_key(p, "0-1000-i"))
    assert write_chunk(p, OWNER, 0, 1000, False) == -1
    # One shard's marker lost (its last slice never ran): only that shard writes again, and
    # writes nothing twice.
    store.shards[0].delete(store.marker_key(p, "0-1000-i"))
    assert write_chunk(p, OWNER, 0, 1000, False) == 0
    assert feeds(store, followers) == {u: [p] for u in followers}


@pytest.mark.integration
def test_a_chunk_lost_with_its_worker_is_sent_again_by_the_ledger_sweep(
        store: FeedStore, data: redis.Redis, queues: BrokerQueues,
        monkeypatch: pytest.MonkeyPatch) -> None:
    configure(monkeypatch, feed_chunk_size=10, fanout_sweep_after=60)
    followers = list(range(300, 330))  # none active: the inactive pass writes them all
    add_followers(store, OWNER, followers)
    p = photo(1)
    chunks = fan_out(p, OWNER)["chunks"]
    ledger, member = store.pending_key(p), f"{p}:{OWNER}"
    assert data.hlen(ledger) == 2 * chunks and data.zscore(store.pending_index, member)
    # A worker takes a chunk off the queue and is killed before kombu records it as unacked:
    # no visibility timeout brings that message back (kombu #305).
    [(_, lost)] = queues.take("feeds_batch", 1)
    run_queued(queues, "feeds")
    run_queued(queues, "feeds_batch")
    assert sum(not f for f in feeds(store, followers).values()) == 10
    assert data.hkeys(ledger) == [f"{lost['lo']}-{lost['hi']}-i"]
    assert resend_stale(data, get_settings())["resent"] == 0  # not due for another minute
    # A minute on: the lost chunk alone is sent again, and only once in that minute.
    data.hset(ledger, mapping={name: repr(time.time() - 61) for name in data.hkeys(ledger)})
    data.zadd(store.pending_index, {member: time.time() - 1})
    assert resend_stale(data, get_settings()) == {"posts": 1, "resent": 1, "finished": 0}
    assert queued(queues, "feeds_batch") == [lost]
    assert resend_stale(data, get_settings())["resent"] == 0
    assert run_queued(queues, "feeds_batch") == [10]
    assert feeds(store, followers) == {u: [p] for u in followers}
    assert not data.exists(ledger) and data.zscore(store.pending_index, member) is None


@pytest.mark.integration
def test_a_follower_who_turns_active_between_the_passes_still_gets_the_post(
        store: FeedStore) -> None:
    add_followers(store, OWNER, [21, 22, 23])
    store.touch(22, time.time() - 2 * 86400)
    p = photo(1)
    assert write_chunk(p, OWNER, 20, 30, True) == 1  # only 22 was active
    store.touch(21)  # 21 opens the app while the inactive chunks still wait in their queue
    store.touch(23, time.time() - 30 * 86400)
    assert write_chunk(p, OWNER, 20, 30, False) == 2
    assert feeds(store, [21, 22, 23]) == {21: [p], 22: [p], 23: [p]}


@pytest.mark.integration
def test_a_feed_is_trimmed_only_when_over_its_cap(
        store: FeedStore, monkeypatch: pytest.MonkeyPatch) -> None:
    configure(monkeypatch, feed_cap=5)
    add_followers(store, OWNER, [42])
    shard = store.shard_for(42)
    shard.config_resetstat()
    for n in range(1, 6):
        assert write_chunk(photo(n), OWNER, 0, 100, False) == 1
    assert shard.info("commandstats").get("cmdstat_ltrim") is None  # never over the cap yet
    for n in range(6, 9):
        write_chunk(photo(n), OWNER, 0, 100, False)
    assert shard.info("commandstats")["cmdstat_ltrim"]["calls"] == 3
    assert store.feed_page(42, 100) == [photo(n) for n in range(8, 3, -1)]


@pytest.mark.integration
def test_a_chunk_run_twice_writes_nothing_the_second_time(store: FeedStore) -> None:
    followers = list(range(10, 70))
    add_followers(store, OWNER, followers)
    p = photo(1)
    store.shard_for(33).lpush(store.feed_key(33), p)  # a follow backfill got there first
    assert write_chunk(p, OWNER, 0, 1000, False) == len(followers) - 1
    assert write_chunk(p, OWNER, 0, 1000, False) == -1  # every shard: done already
    assert feeds(store, followers) == {u: [p] for u in followers}

    # A redelivery after one shard's call went through and another's did not.
    lost = [u for u in followers if jump_hash(u, 3) == 1]
    shard = store.shards[1]
    shard.delete(store.marker_key(p, "0-1000-i"))
    for uid in lost:
        shard.lrem(store.feed_key(uid), 0, p)
    assert write_chunk(p, OWNER, 0, 1000, False) == len(lost)
    # A replay after every marker expired: the feeds themselves refuse a duplicate.
    for s in store.shards:
        s.delete(store.marker_key(p, "0-1000-i"))
    assert write_chunk(p, OWNER, 0, 1000, False) == 0
    assert feeds(store, followers) == {u: [p] for u in followers}


@pytest.mark.integration
def test_late_and_out_of_order_posts_keep_feeds_sorted_without_duplicates(
        store: FeedStore, monkeypatch: pytest.MonkeyPatch) -> None:
    add_followers(store, OWNER, [11, 12, 13])
    order = list(range(1, 61))
    random.Random(5).shuffle(order)
    for n in order:
        write_chunk(photo(n), OWNER, 10, 11, False)
    assert store.feed_page(11, 100) == [photo(n) for n in range(60, 0, -1)]
    # Replayed once their markers are gone (as a rebuild or backfill would write them again).
    for shard in store.shards:
        for marker in shard.scan_iter(f"{store.s.key_prefix}:fanout:*"):
            shard.delete(marker)
    for n in order:
        assert write_chunk(photo(n), OWNER, 10, 11, False) == 0
    assert store.feed_page(11, 100) == [photo(n) for n in range(60, 0, -1)]

    # A full feed keeps the newest `cap` photos it has seen, whatever the arrival order.
    configure(monkeypatch, feed_cap=20)
    for n in order:
        write_chunk(photo(n), OWNER, 11, 12, False)
    assert store.feed_page(12, 100) == [photo(n) for n in range(60, 40, -1)]

    # Into a full feed: an older photo goes in its place (the oldest drops off); one older than
    # everything there does not go in at all.
    configure(monkeypatch, feed_cap=3)
    for n in (1, 3, 5):
        write_chunk(photo(n), OWNER, 12, 13, False)
    write_chunk(photo(4), OWNER, 12, 13, False)
    assert store.feed_page(13) == [photo(5), photo(4), photo(3)]
    write_chunk(photo(2), OWNER, 12, 13, False)
    assert store.feed_page(13) == [photo(5), photo(4), photo(3)]


@pytest.mark.integration
def test_a_deleted_photo_is_not_written(
        store: FeedStore, queues: BrokerQueues) -> None:
    followers = list(range(10, 40))
    add_followers(store, OWNER, followers)
    p = photo(1)
    tomb = store.s.key("deleted", p)
    store.graph.set(tomb, 1)
    assert fan_out(p, OWNER) == {"deleted": True, "followers": 0, "chunks": 0}
    assert not queues.depth("feeds") and not queues.depth("feeds_batch")
    assert store.graph.llen(store.posts_key(OWNER)) == 0 and store.feed_page(OWNER) == []
    assert write_chunk(p, OWNER, 0, 1000, False) == 0

    # The delete path tombstones every shard too: a chunk that read the graph before the
    # tombstone still writes nothing where the delete may already have swept.
    store.graph.delete(tomb)
    store.shards[2].set(tomb, 1)
    write_chunk(p, OWNER, 0, 1000, False)
    assert {u for u, f in feeds(store, followers).items() if f} == {
        u for u in followers if jump_hash(u, 3) != 2}


@pytest.mark.integration
def test_unknown_owner_or_no_followers_is_a_clean_no_op(
        store: FeedStore, queues: BrokerQueues) -> None:
    assert fan_out(photo(1), 999) == {"deleted": False, "followers": 0, "chunks": 0}
    add_followers(store, 998, [5])
    store.unfollow(5, 998)
    assert fan_out(photo(2), 998)["chunks"] == 0
    assert not queues.depth("feeds") and not queues.depth("feeds_batch")
    assert write_chunk(photo(1), 999, 0, MAX_USER_ID, True) == 0
    assert store.feed_page(999) == [photo(1)]  # the owner's own post is still theirs
    assert store.feed_page(5) == []


# Arguments are checked once, at the task's entry (tasks/core/validation.py), as a message
# carries them: a refusal there is permanent, so a malformed chunk is dead-lettered, not retried.
def chunk_args(**changes: Any) -> dict[str, Any]:
    return {"photo_id": photo(1), "owner_id": OWNER, "lo": 0, "hi": 10, "active": True, **changes}


@pytest.mark.parametrize("bad", [0, -1, "12", True, 2**63, 1.5, None])
def test_malformed_photo_ids_are_refused(bad: Any) -> None:
    with pytest.raises(PermanentError, match="photo_id"):
        check("feeds.fanout", (), {"photo_id": bad, "owner_id": OWNER})
    with pytest.raises(PermanentError, match="photo_id"):
        check("feeds.fanout_chunk", (), chunk_args(photo_id=bad))


@pytest.mark.parametrize("bad", [0, -1, "12", True, 2**63, 2**53])
def test_malformed_owner_ids_are_refused(bad: Any) -> None:
    with pytest.raises(PermanentError, match="owner_id"):
        check("feeds.fanout", (), {"photo_id": photo(1), "owner_id": bad})
    with pytest.raises(PermanentError, match="owner_id"):
        check("feeds.fanout_chunk", (), chunk_args(owner_id=bad))


@pytest.mark.parametrize(("lo", "hi", "active"), [
    (10, 10, True), (-1, 10, True), (0, 2**53, True), ("0", 10, True), (0, 10, "yes"),
    (0, 10, 1), (False, 10, True)])
def test_malformed_chunks_are_refused(lo: Any, hi: Any, active: Any) -> None:
    with pytest.raises(PermanentError):
        check("feeds.fanout_chunk", (), chunk_args(lo=lo, hi=hi, active=active))


@pytest.mark.integration
def test_a_follow_or_unfollow_mid_fan_out_shifts_nobody_into_another_chunk(
        store: FeedStore, queues: BrokerQueues, monkeypatch: pytest.MonkeyPatch) -> None:
    configure(monkeypatch, feed_chunk_size=10)
    followers = list(range(2, 202, 2))  # even ids
    add_followers(store, OWNER, followers)
    p = photo(1)
    fan_out(p, OWNER)
    chunks = queued(queues, "feeds_batch")
    assert len(chunks) == 10
    first, *rest = chunks
    write_chunk(**first)  # followers 2..20 done
    store.unfollow(4, OWNER)  # removed from a done chunk: would shift everyone by rank
    store.unfollow(150, OWNER)
    add_followers(store, OWNER, [9, 91, 10_001])  # a done chunk, a pending one, past the end
    for kw in rest:
        members = store.graph.zrangebyscore(store.followers_key(OWNER), f"({kw['lo']}", kw["hi"])
        assert len(members) <= 11
        write_chunk(**kw)
    got = {u for u, f in feeds(store, [*followers, 9, 91, 10_001]).items() if f == [p]}
    assert got == (set(followers) - {150}) | {91, 10_001}


# Through the broker, with real workers -------------------------------------------------------

def have(store: FeedStore, uids: list[int], p: int) -> dict[int, int]:
    """How many times each user's feed holds the photo."""
    return {u: f.count(p) for u, f in feeds(store, uids).items()}


@pytest.mark.integration
def test_workers_serve_active_followers_first_then_everyone_exactly_once(
        store: FeedStore, sharded: dict[str, str], queues: BrokerQueues, workers: WorkerFactory,
        monkeypatch: pytest.MonkeyPatch) -> None:
    env = {**sharded, "FARM_FEED_CHUNK_SIZE": "500"}
    configure(monkeypatch, feed_chunk_size=500)
    followers = list(range(10, 5010))
    add_followers(store, OWNER, followers)
    active = followers[::4]
    for uid in active:
        store.touch(uid, time.time() - 86400)  # seen yesterday
    p = photo(1)
    workers("feed", env=env, concurrency=2)  # no batch worker yet
    app.send_task("feeds.fanout", kwargs={"photo_id": p, "owner_id": OWNER})
    wait_for(lambda: all(have(store, active, p).values()), what="the active followers")
    wait_for(lambda: queues.depth("feeds_batch") == 10, what="the inactive chunks")
    counts = have(store, followers, p)
    assert {u for u, c in counts.items() if c} == set(active)

    workers("batch", env=env, concurrency=2)
    wait_for(lambda: all(have(store, followers, p).values()), timeout=30, what="everyone")
    wait_for(lambda: not queues.depth("feeds_batch"), what="the batch queue to drain")
    time.sleep(0.3)
    assert set(have(store, [*followers, OWNER], p).values()) == {1}


@pytest.mark.integration
def test_a_worker_killed_mid_fan_out_leaves_every_follower_the_post_exactly_once(
        store: FeedStore, sharded: dict[str, str], data: redis.Redis, broker: redis.Redis,
        workers: WorkerFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    env = {**sharded, **FAST_REDELIVERY, "FARM_FEED_CHUNK_SIZE": "15"}
    configure(monkeypatch, feed_chunk_size=15, fanout_sweep_after=2)
    followers = list(range(10, 3010))
    add_followers(store, OWNER, followers)
    for uid in followers:  # all active: every chunk that matters is on the feeds queue
        store.touch(uid, time.time() - 3600)
    p = photo(1)
    doomed = workers("feed", env=env, node="doomed")
    app.send_task("feeds.fanout", kwargs={"photo_id": p, "owner_id": OWNER})

    def done() -> int:
        return int(data.hget("farm:metrics:tasks", "feeds.fanout_chunk:ok") or 0)

    wait_for(lambda: done() >= 30, what="the fan-out to be under way")
    doomed.kill()  # the whole process group, mid-fan-out: what it held is never acked
    # The chunks the dead worker held (taken off the queue, never acked).
    held = {json.loads(m)[0]["headers"]["id"] for m in broker.hvals("unacked")}
    counts = have(store, followers, p)
    assert 0 < sum(counts.values()) < len(followers)
    assert max(counts.values()) == 1

    rescuer = workers("feed", env=env, node="rescuer")
    sweeps: list[dict[str, int]] = []

    def everyone() -> bool:
        if all(have(store, followers, p).values()):
            return True
        if not broker.llen("feeds") and not broker.hlen("unacked"):
            # Drained, and still short: a message the killed worker took off the queue without
            # recording it is gone for good (kombu #305); the ledger's sweep sends it again.
            sweeps.append(resend_stale(data, get_settings()))
        return False

    try:
        wait_for(everyone, timeout=40, what="every follower")
    except AssertionError as exc:  # say what was left where, for a failure seen only in CI
        missing = [u for u, n in have(store, followers, p).items() if not n]
        raise AssertionError(
            f"{exc}: {len(missing)} missing (e.g. {missing[:5]}); feeds queue "
            f"{broker.llen('feeds')}, unacked {broker.hlen('unacked')}, sweep lock "
            f"{broker.pttl('unacked_mutex')} ms; held {sorted(held)[:5]}; sweeps "
            f"{[x for x in sweeps if x['resent']]}; rescuer "
            f"log tail:\n{rescuer.log()[-3000:]}") from None
    wait_for(lambda: not broker.llen("feeds") and not broker.hlen("unacked"), timeout=20,
             what="the feeds queue to drain")
    assert set(have(store, followers, p).values()) == {1}
    # Every held chunk came back marked redelivered and ran again: one restored start each.
    for task_id in held:
        assert data.get(f"farm:deliveries:{task_id}:0") == "1"

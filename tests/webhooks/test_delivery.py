"""webhooks.deliver and webhooks.replay's work against a real local receiver: signed POSTs,
markers, failure accounting, pausing, resuming and replaying exactly what was missed."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import redis

from config.settings import get_settings
from tasks.core.errors import PermanentError, RateLimited, TransientError
from tasks.webhooks import delivery
from tasks.webhooks.subscriptions import Subscriptions, UnknownSubscription
from tests.webhooks.conftest import OWNER, Configure, Subscribe, new_photo_id, queued
from workers.demo_webhooks import WebhookReceiver


def replay_message(msg: dict[str, Any]) -> delivery.Outcome:
    """What the webhooks.replay task does with a queued message."""
    return delivery.replay(msg["kwargs"]["subscriber_id"], msg["kwargs"]["since"])


def ids(received: list[Any]) -> list[str]:
    return [r.webhook_id for r in received]


def test_a_new_photo_reaches_its_owners_and_its_tags_subscribers_signed(
        subscribe: Subscribe, receiver: WebhookReceiver, data: redis.Redis) -> None:
    owner, _ = subscribe("user", OWNER, "/owner")
    tag, _ = subscribe("tag", "sunset", "/tag")
    subscribe("user", OWNER + 1, "/other")
    photo = new_photo_id()
    out = delivery.deliver(photo, OWNER, "Evening #Sunset")
    assert (out.matched, out.sent, out.skipped) == (2, 2, 0)
    got = {r.path: r for r in receiver.received()}
    assert set(got) == {"/owner", "/tag"}
    assert all(r.verified for r in got.values()), [r.error for r in got.values()]
    body = json.loads(got["/tag"].body)
    assert body["type"] == "photo.created"
    assert body["data"] == {"subscription_id": tag.id, "object": "tag", "object_id": "sunset",
                            "photo_id": str(photo), "owner_id": OWNER,
                            "link": f"https://photofarm.example/p/{photo}"}
    assert "Evening" not in got["/tag"].body.decode()  # no caption
    assert got["/owner"].webhook_id == f"msg_{owner.id}_{photo}"
    assert json.loads(got["/owner"].body)["data"]["object_id"] == str(OWNER)
    counters = data.hgetall("farm:metrics:counters")
    assert counters["webhooks.sent"] == "2"


def test_delivering_twice_sends_nothing_twice(subscribe: Subscribe,
                                              receiver: WebhookReceiver) -> None:
    subscribe("user", OWNER, "/a")
    subscribe("tag", "cats", "/b")
    photo = new_photo_id()
    delivery.deliver(photo, OWNER, "#cats")
    again = delivery.deliver(photo, OWNER, "#cats")
    assert (again.sent, again.skipped) == (0, 2)
    assert len(receiver.received()) == 2


def test_only_the_failed_are_retried_and_success_resets_the_count(
        subscribe: Subscribe, receiver: WebhookReceiver, subs: Subscriptions) -> None:
    good, _ = subscribe("user", OWNER, "/good")
    bad, _ = subscribe("user", OWNER, "/bad")
    receiver.fail_next(1, status=503, path="/bad", retry_after="7")
    photo = new_photo_id()
    with pytest.raises(TransientError, match=r"1 of 2 subscriber\(s\) to retry: "
                       rf"subscription {bad.id}: HTTP 503") as failed:
        delivery.deliver(photo, OWNER, "")
    assert failed.value.retry_after == 7  # the subscriber's Retry-After
    after = subs.get(bad.id)
    assert after.failures == 1 and after.last_error == "HTTP 503" and after.active
    out = delivery.deliver(photo, OWNER, "")  # what the task base's retry does
    assert (out.sent, out.skipped) == (1, 1)
    assert len(receiver.received("/good")) == 1  # never sent twice
    first, second = receiver.received("/bad")
    assert first.webhook_id == second.webhook_id == f"msg_{bad.id}_{photo}"
    assert first.body == second.body  # the same event, byte for byte
    assert subs.get(bad.id).failures == 0 and subs.get(good.id).failures == 0


def test_timeouts_and_redirects_are_failures_and_a_big_answer_is_not(
        subscribe: Subscribe, receiver: WebhookReceiver, subs: Subscriptions,
        data: redis.Redis) -> None:
    slow, _ = subscribe("user", OWNER, "/slow")
    moved, _ = subscribe("user", OWNER, "/moved")
    big, _ = subscribe("user", OWNER, "/big")
    receiver.slow_next(1, seconds=5, path="/slow")
    receiver.redirect_next(1, location=receiver.url("/elsewhere"), path="/moved")
    receiver.huge_next(1, size=2_000_000, path="/big")
    photo = new_photo_id()
    with pytest.raises(TransientError, match=r"2 of 3 subscriber\(s\)") as failed:
        delivery.deliver(photo, OWNER, "")
    assert "no answer within 1s" in str(failed.value)
    assert "HTTP 302: redirect not followed" in str(failed.value)
    assert subs.get(slow.id).failures == subs.get(moved.id).failures == 1
    assert subs.get(big.id).failures == 0
    assert data.get(f"farm:webhooks:sent:{big.id}:{photo}") == "1"
    assert [path for _, path in receiver.requests].count("/elsewhere") == 0


def test_subscribers_are_sent_to_concurrently(subscribe: Subscribe,
                                              receiver: WebhookReceiver) -> None:
    for n in range(6):
        subscribe("user", OWNER, f"/s{n}")
    receiver.slow_next(6, seconds=0.5)
    out = delivery.deliver(new_photo_id(), OWNER, "")
    assert out.sent == 6
    assert receiver.max_in_flight >= 4  # FARM_WEBHOOK_CONCURRENCY is 8


def test_pause_after_failures_in_a_row_then_resume_replays_exactly_what_was_missed(
        subscribe: Subscribe, receiver: WebhookReceiver, subs: Subscriptions,
        configure: Configure, broker: redis.Redis) -> None:
    configure(FARM_WEBHOOK_PAUSE_AFTER="3")
    sub, _ = subscribe("user", OWNER, "/hook")
    photos = [new_photo_id() for _ in range(7)]
    delivery.deliver(photos[0], OWNER, "")  # delivered: never sent again
    receiver.fail_next(3, status=500)
    for photo in photos[1:3]:
        with pytest.raises(TransientError):
            delivery.deliver(photo, OWNER, "")
    out = delivery.deliver(photos[3], OWNER, "")  # the third failure in a row: paused, no retry
    assert out.paused == [sub.id]
    paused = subs.get(sub.id)
    assert paused.state == "paused" and paused.failures == 3
    assert "3 failed deliveries in a row; last: HTTP 500" in paused.paused_reason
    for photo in photos[4:]:  # logged while paused, not sent
        held = delivery.deliver(photo, OWNER, "")
        assert (held.held, held.sent) == (1, 0)
    assert len(receiver.received()) == 4
    failed_ids = ids(receiver.received())[1:]

    # A paused subscription replays nothing.
    assert delivery.replay(sub.id, 0).sent == 0 and len(receiver.received()) == 4

    resumed, task_id, _ = delivery.resume(sub.id)
    assert resumed.state == "active" and resumed.failures == 0 and task_id
    (msg,) = queued(broker, "webhooks_batch")
    assert msg["task"] == "webhooks.replay" and msg["kwargs"]["subscriber_id"] == sub.id
    # The replay starts at the first failed event, before the pause.
    assert msg["kwargs"]["since"] <= paused.paused_at

    out = replay_message(msg)
    assert out.sent == 6
    replayed = receiver.received()[4:]
    assert ids(replayed) == [f"msg_{sub.id}_{p}" for p in photos[1:]]  # in order, same ids
    assert ids(replayed)[:3] == failed_ids
    assert all(r.verified for r in replayed)
    # Everything is delivered now: a replay from the start sends nothing more.
    again = delivery.replay(sub.id, 0)
    assert (again.sent, again.skipped) == (0, 7)
    assert len(receiver.received()) == 10


def test_a_replay_stops_at_the_first_failure_and_keeps_the_order(
        subscribe: Subscribe, receiver: WebhookReceiver, subs: Subscriptions) -> None:
    sub, _ = subscribe("user", OWNER, "/hook")
    subs.pause(sub.id)
    photos = [new_photo_id() for _ in range(3)]
    for photo in photos:
        delivery.deliver(photo, OWNER, "")
    subs.resume(sub.id)
    receiver.fail_next(1, status=500)
    with pytest.raises(TransientError, match="HTTP 500"):
        delivery.replay(sub.id, 0)
    assert len(receiver.received()) == 1  # stopped there: nothing sent out of order
    assert delivery.replay(sub.id, 0).sent == 3
    assert ids(receiver.received()) == [f"msg_{sub.id}_{p}" for p in [photos[0], *photos]]


def test_a_long_replay_continues_in_a_new_task(
        subscribe: Subscribe, receiver: WebhookReceiver, subs: Subscriptions,
        monkeypatch: pytest.MonkeyPatch, broker: redis.Redis) -> None:
    sub, _ = subscribe("user", OWNER, "/hook")
    subs.pause(sub.id)
    photos = [new_photo_id() for _ in range(3)]
    for photo in photos:
        delivery.deliver(photo, OWNER, "")
    subs.resume(sub.id)
    monkeypatch.setattr(delivery, "REPLAY_CHUNK", 2)
    out = delivery.replay(sub.id, 0)
    assert out.sent == 2 and out.queued
    (msg,) = queued(broker, "webhooks_batch")
    assert msg["kwargs"]["subscriber_id"] == sub.id
    assert replay_message(msg).sent == 1
    assert ids(receiver.received()) == [f"msg_{sub.id}_{p}" for p in photos]


def test_unknown_subscription_replay_is_permanent(subs: Subscriptions) -> None:
    with pytest.raises(UnknownSubscription) as unknown:
        delivery.replay(999, 0)
    assert isinstance(unknown.value, PermanentError)


def test_a_refusal_at_send_time_counts_and_is_not_retried(
        subscribe: Subscribe, receiver: WebhookReceiver, subs: Subscriptions,
        configure: Configure) -> None:
    """The callback's address became private after it was verified (allowed then, not now)."""
    sub, _ = subscribe("user", OWNER, "/hook")
    configure(FARM_WEBHOOK_ALLOW_NETWORKS="")
    photo = new_photo_id()
    out = delivery.deliver(photo, OWNER, "")  # no TransientError: no retry storm
    assert out.refused == 1 and out.sent == 0
    after = subs.get(sub.id)
    assert after.failures == 1 and "refused" in after.last_error and "loopback" in after.last_error
    assert delivery.deliver(photo, OWNER, "").skipped == 1  # a retry does not try again
    assert subs.get(sub.id).failures == 1
    assert receiver.requests == [("GET", "/hook")]  # only the challenge, back when allowed
    with pytest.raises(PermanentError, match="loopback"):
        delivery.replay(sub.id, 0)
    configure(FARM_WEBHOOK_ALLOW_NETWORKS="127.0.0.0/8")  # an operator has looked: replay sends
    assert delivery.replay(sub.id, 0).sent == 1
    assert ids(receiver.received()) == [f"msg_{sub.id}_{photo}"]


def test_over_the_rate_limit_waits(subscribe: Subscribe, receiver: WebhookReceiver,
                                   configure: Configure) -> None:
    configure(FARM_WEBHOOK_RATE_LIMIT="2/minute")
    subscribe("user", OWNER, "/hook")
    for _ in range(2):
        delivery.deliver(new_photo_id(), OWNER, "")
    with pytest.raises(RateLimited) as waiting:
        delivery.deliver(new_photo_id(), OWNER, "")
    assert 0 < (waiting.value.retry_after or 0) <= 60
    assert len(receiver.received()) == 2


def test_the_event_log_is_trimmed(subscribe: Subscribe, subs: Subscriptions,
                                  data: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    sub, _ = subscribe("user", OWNER, "/hook")
    subs.pause(sub.id)
    key = f"farm:webhooks:log:{sub.id}"
    data.zadd(key, {f"1:{OWNER}": time.time() - 8 * 86400})  # older than FARM_WEBHOOK_LOG_DAYS
    monkeypatch.setattr(delivery, "MAX_LOG_EVENTS", 3)
    photos = [new_photo_id() for _ in range(5)]
    for photo in photos:
        delivery.deliver(photo, OWNER, "")
    assert data.zrange(key, 0, -1) == [f"{p}:{OWNER}" for p in photos[2:]]
    assert 0 < data.ttl(key) <= get_settings().webhook_log_days * 86400 + 86400


def test_the_task_runs_the_delivery(subscribe: Subscribe, receiver: WebhookReceiver) -> None:
    from tasks.webhooks.tasks import deliver

    subscribe("user", OWNER, "/hook")
    deliver(new_photo_id(), OWNER, "")  # called directly: the plain function, no broker
    assert len(receiver.received()) == 1

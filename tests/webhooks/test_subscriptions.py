"""Subscriptions in the data Redis, and the challenge handshake against a real local server."""

from __future__ import annotations

import pytest
import redis

from tasks.core import sealed
from tasks.webhooks.subscriptions import (
    ChallengeFailed,
    Subscriptions,
    UnknownSubscription,
    caption_tags,
    challenge_url,
    normalise_tag,
)
from tests.webhooks.conftest import OWNER, Configure, Subscribe
from workers.demo_webhooks import WebhookReceiver


def stored_keys(data: redis.Redis) -> list[str]:
    return sorted(k for k in data.keys("farm:webhooks:*") if not k.endswith(":next_id"))


def test_add_verifies_with_the_challenge_and_keeps_the_secret_sealed(
        subs: Subscriptions, receiver: WebhookReceiver, data: redis.Redis) -> None:
    sub, secret = subs.add("tag", "#SunSet", receiver.url("/cb?app=1"), verify_token="tok-1")
    assert (sub.object, sub.object_id, sub.state, sub.failures) == ("tag", "sunset", "active", 0)
    assert secret.startswith("whsec_")
    (challenge,) = receiver.challenges
    assert challenge.mode == "subscribe" and challenge.verify_token == "tok-1"
    assert len(challenge.challenge) >= 32
    raw = data.hgetall(f"farm:webhooks:sub:{sub.id}")
    assert secret not in str(raw)  # sealed at rest
    assert sealed.unseal(raw["secret"]) == secret == subs.get(sub.id).secret()
    assert secret not in repr(subs.get(sub.id))
    assert [s.id for s in subs.list()] == [sub.id]


def test_ids_come_from_incr(subscribe: Subscribe) -> None:
    first, _ = subscribe("user", OWNER, "/a")
    second, _ = subscribe("tag", "cats", "/b")
    assert second.id == first.id + 1


@pytest.mark.parametrize("knob, why", [
    ("wrong", "did not echo the challenge"),
    ("404", "HTTP 404"),
    ("slow", "did not answer the challenge within 1s"),
    ("redirect", "redirect"),
])
def test_a_callback_that_does_not_echo_is_refused_and_nothing_stored(
        subs: Subscriptions, receiver: WebhookReceiver, data: redis.Redis, knob: str,
        why: str) -> None:
    if knob == "wrong":
        receiver.wrong_challenge_next(1)
    elif knob == "404":
        receiver.fail_next(1, status=404)
    elif knob == "slow":
        receiver.slow_next(1, seconds=5)
    else:
        receiver.redirect_next(1, location=receiver.url("/elsewhere"))
    with pytest.raises(ChallengeFailed, match=why):
        subs.add("user", OWNER, receiver.url("/cb"))
    assert stored_keys(data) == [] and subs.list() == []
    assert len(receiver.challenges) == 1 and receiver.received() == []


def test_a_callback_on_a_private_address_is_refused(subs: Subscriptions, configure: Configure,
                                                    receiver: WebhookReceiver,
                                                    data: redis.Redis) -> None:
    strict = Subscriptions(subs.r, configure(FARM_WEBHOOK_ALLOW_NETWORKS=""))
    with pytest.raises(ValueError, match=r"callback refused.*loopback"):
        strict.add("user", OWNER, receiver.url("/cb"))
    assert receiver.requests == [] and stored_keys(data) == []


@pytest.mark.parametrize("obj, oid, url, why", [
    ("group", "1", "http://h.example/", "object"),
    ("user", 0, "http://h.example/", "user id"),
    ("user", "abc", "http://h.example/", "user id"),
    ("tag", "two words", "http://h.example/", "tag"),
    ("tag", "x" * 101, "http://h.example/", "tag"),
    ("tag", "café", "http://h.example/", "tag"),
    ("user", 1, "ftp://h.example/", "http:// or https://"),
    ("user", 1, "https://u:p@h.example/", "user name or password"),
    ("user", 1, "https://h.example/" + "p" * 2048, "2048"),
])
def test_bad_subscriptions_are_refused_before_any_request(
        subs: Subscriptions, receiver: WebhookReceiver, obj: str, oid: object, url: str,
        why: str) -> None:
    with pytest.raises(ValueError, match=why):
        subs.add(obj, oid, url)  # type: ignore[arg-type]
    assert subs.list() == []


def test_pause_resume_remove(subscribe: Subscribe, subs: Subscriptions,
                             data: redis.Redis) -> None:
    sub, _ = subscribe()
    paused = subs.pause(sub.id, "maintenance")
    assert (paused.state, paused.paused_reason) == ("paused", "maintenance")
    assert paused.paused_at is not None
    assert subs.pause(sub.id, "again").paused_at == paused.paused_at  # the first pause kept
    resumed = subs.resume(sub.id)
    assert (resumed.state, resumed.failures, resumed.paused_reason) == ("active", 0, "")
    assert resumed.paused_at == paused.paused_at  # where the replay starts
    subs.remove(sub.id)
    assert stored_keys(data) == []
    for action in (subs.get, subs.pause, subs.resume, subs.remove):
        with pytest.raises(UnknownSubscription, match=f"no webhook subscription {sub.id}"):
            action(sub.id)


def test_matching_by_owner_and_caption_tags(subscribe: Subscribe, subs: Subscriptions) -> None:
    to_owner, _ = subscribe("user", OWNER, "/owner")
    to_other, _ = subscribe("user", OWNER + 1, "/other")
    sunset, _ = subscribe("tag", "sunset", "/sunset")
    beach, _ = subscribe("tag", "beach_2024", "/beach")
    paused, _ = subscribe("tag", "cats", "/cats")
    subs.pause(paused.id)

    def ids(owner: int, caption: str) -> list[int]:
        return [s.id for s in subs.matching(owner, caption)]

    assert ids(OWNER, "") == [to_owner.id]
    assert ids(OWNER + 1, "Golden #SUNSET at the #Beach_2024, #cats!") == [
        to_other.id, sunset.id, beach.id, paused.id]  # paused ones too: they get the log
    assert ids(7, "no#sunset here, ##sunset, #sunsetting, #café") == []
    assert ids(7, "#sunset#beach_2024") == [sunset.id]


def test_caption_tags() -> None:
    assert caption_tags("#A #b #a, (#c) #d_1 #é #" + "x" * 101) == ["a", "b", "c", "d_1"]
    assert len(caption_tags(" ".join(f"#t{i}" for i in range(50)))) == 30
    assert normalise_tag(" #Cats ") == "cats"


def test_challenge_url_keeps_the_callbacks_query() -> None:
    url = challenge_url("https://h.example/cb?app=1", "c h", "t&k")
    assert url == ("https://h.example/cb?app=1&hub.mode=subscribe&hub.challenge=c+h"
                   "&hub.verify_token=t%26k")


def test_key_rotation_reseals_every_signing_secret(
        data: redis.Redis, configure: Configure) -> None:
    old, new = sealed.new_key(), sealed.new_key()
    s = configure(FARM_TOKEN_KEYS=old)
    made = [Subscriptions(data, s).add("user", OWNER + i, f"https://hooks.example/{i}",
                                       verify=False) for i in range(3)]
    before = {sub.id: data.hget(f"farm:webhooks:sub:{sub.id}", "secret") for sub, _ in made}
    s = configure(FARM_TOKEN_KEYS=f"{new},{old}")
    assert Subscriptions(data, s).rotate() == 3
    s = configure(FARM_TOKEN_KEYS=new)  # the old key dropped
    for sub, secret in made:
        raw = data.hget(f"farm:webhooks:sub:{sub.id}", "secret")
        assert raw != before[sub.id] and secret not in str(raw)
        assert Subscriptions(data, s).get(sub.id).secret(s) == secret  # subscribers unaffected

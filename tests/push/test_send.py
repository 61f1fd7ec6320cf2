"""push.notify end to end: the device registry, real io workers, and the local APNs stand-in
(HTTP/2 over TLS, verifying the JWT, topic and headers, answering as Apple does)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

from config.settings import get_settings
from tasks import enqueue
from tasks.core.deadletter import DeadLetterStore
from tasks.push.devices import DeviceRegistry
from tests.support.apns_standin import ApnsKey, ApnsStandin
from tests.support.workers import WorkerFactory, wait_for

pytestmark = pytest.mark.integration


def tok(n: int) -> str:
    return f"{n:064x}"


@pytest.fixture
def push_env(apns_clean: ApnsStandin, apns_key: ApnsKey,
             monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """Settings naming the stand-in as the app's APNs endpoint, here and for workers."""
    from tasks.push.apns import apps, token

    env = {"FARM_APNS_APPS": f"{apns_key.topic}|{apns_key.key_id}|{apns_key.team_id}|"
                             f"{apns_key.p8_path}|{apns_clean.endpoint}",
           "FARM_APNS_CA_FILE": str(apns_clean.ca_pem_path)}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    apps.reset()
    token.clear_cache()
    yield env
    monkeypatch.undo()
    get_settings.cache_clear()
    apps.reset()
    token.clear_cache()


def registry(data: redis.Redis) -> DeviceRegistry:
    return DeviceRegistry(data, get_settings())


def counters(data: redis.Redis) -> dict[str, str]:
    return data.hgetall("farm:metrics:counters")


def test_pushes_reach_devices_dead_tokens_are_pruned_and_one_jwt_serves_the_farm(
        push_env: dict, apns_clean: ApnsStandin, apns_key: ApnsKey, data: redis.Redis,
        workers: WorkerFactory) -> None:
    reg = registry(data)
    reg.register(1, apns_key.topic, tok(1), when=1000.0)
    reg.register(1, apns_key.topic, tok(2), when=1000.0)
    reg.register(2, apns_key.topic, tok(3), when=1000.0)
    reg.register(3, apns_key.topic, tok(4), when=9e9)  # re-registered after Apple's 410
    apns_clean.script(tok(3), 400, "BadDeviceToken")
    apns_clean.unregister(tok(2), timestamp=2_000_000)  # 2000 s: after the 1000 s registration
    apns_clean.unregister(tok(4), timestamp=2_000_000)
    workers("io", env=push_env, concurrency=4, node="io-a")
    workers("io", env=push_env, concurrency=4, node="io-b")

    for n in range(6):  # several notifications, spread over both worker processes
        enqueue.notify_users([1, 2, 3], f"like #{n}", badge=n)
    wait_for(lambda: len(apns_clean.deliveries(tok(1))) == 6, what="six deliveries")

    first = apns_clean.deliveries(tok(1))[0]
    assert first.headers["apns-topic"] == apns_key.topic
    assert first.headers["apns-push-type"] == "alert"
    assert first.payload["aps"]["alert"].startswith("like #")
    assert len(apns_clean.jwts_seen()) == 1  # one provider token for both processes
    wait_for(lambda: [d.token for d in reg.devices([1, 2, 3])] == [tok(1), tok(4)],
             what="BadDeviceToken and a stale Unregistered token pruned")
    wait_for(lambda: counters(data).get("push.sent") == "6", what="counters")
    assert counters(data)["push.pruned"] == "2"


def test_only_failed_devices_are_retried_and_none_gets_it_twice(
        push_env: dict, apns_clean: ApnsStandin, apns_key: ApnsKey, data: redis.Redis,
        workers: WorkerFactory) -> None:
    reg = registry(data)
    for n in (1, 2, 3):
        reg.register(n, apns_key.topic, tok(n))
    apns_clean.fail(tok(2), times=2, status=503)
    apns_clean.fail(tok(3), times=1, status=429)
    workers("io", env=push_env, concurrency=2)
    enqueue.notify_users([1, 2, 3], "hello")
    wait_for(lambda: all(apns_clean.deliveries(tok(n)) for n in (1, 2, 3)), what="deliveries")
    wait_for(lambda: data.hget("farm:metrics:tasks", "push.notify:ok"), what="the task to end")
    assert [len(apns_clean.deliveries(tok(n))) for n in (1, 2, 3)] == [1, 1, 1]
    assert len(apns_clean.received(tok(1))) == 1  # never resent to a device that had it
    assert len(apns_clean.received(tok(2))) == 3
    assert data.hget("farm:metrics:tasks", "push.notify:retry") == "2"


def test_an_expired_provider_token_is_re_signed_once_and_the_push_goes_through(
        push_env: dict, apns_clean: ApnsStandin, apns_key: ApnsKey, data: redis.Redis) -> None:
    from tasks.push.send import notify

    registry(data).register(1, apns_key.topic, tok(1))
    registry(data).register(2, apns_key.topic, tok(2))
    assert notify([1], "first", "n1").sent == 1
    apns_clean.expire_seen_tokens()  # an hour later, as far as Apple is concerned
    out = notify([1, 2], "second", "n2")
    assert (out.sent, out.retry, dict(out.failed)) == (2, [], {})
    assert len(apns_clean.jwts_seen()) == 2  # re-signed once, not per device
    assert len(apns_clean.deliveries(tok(1))) == 2 and len(apns_clean.deliveries(tok(2))) == 1


def test_expiry_of_a_token_too_young_to_re_sign_is_retried_later_not_re_signed(
        push_env: dict, apns_clean: ApnsStandin, apns_key: ApnsKey, data: redis.Redis,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from tasks.core.errors import TransientError
    from tasks.push.apns import token
    from tasks.push.send import notify

    monkeypatch.setenv("FARM_APNS_MIN_RESIGN_AGE", "1200")  # the production default
    get_settings.cache_clear()
    for n in (1, 2):
        registry(data).register(n, apns_key.topic, tok(n))
    assert notify([1], "first", "n1").sent == 1
    apns_clean.expire_seen_tokens()  # seconds after signing: this host's clock must be off
    with pytest.raises(TransientError, match="clock skew") as raised:
        notify([1, 2], "second", "n2")
    assert 1100 < (raised.value.retry_after or 0) <= 1200
    assert len(apns_clean.jwts_seen()) == 1  # not re-signed into Apple's throttle
    assert counters(data)["push.failed.ExpiredProviderToken"] == "2"
    # Twenty minutes on, the retry re-signs and delivers to both.
    key = get_settings().key("apns", "token", apns_key.team_id, apns_key.key_id)
    data.hset(key, "iat", int(time.time()) - 21 * 60)
    token.clear_cache()
    out = notify([1, 2], "second", "n2")
    assert (out.sent, out.skipped) == (2, 0) and len(apns_clean.jwts_seen()) == 2


def test_a_redelivered_notification_is_not_pushed_twice(
        push_env: dict, apns_clean: ApnsStandin, apns_key: ApnsKey, data: redis.Redis) -> None:
    from tasks.push.send import notify

    registry(data).register(1, apns_key.topic, tok(1))
    assert notify([1], "once", "n-same").sent == 1
    again = notify([1], "once", "n-same")  # the same message delivered again
    assert (again.sent, again.skipped) == (0, 1)
    assert len(apns_clean.received(tok(1))) == 1


def test_stand_in_down_retries_then_dead_letters(
        push_env: dict, apns_clean: ApnsStandin, apns_key: ApnsKey, data: redis.Redis,
        workers: WorkerFactory) -> None:
    registry(data).register(1, apns_key.topic, tok(1))
    workers("io", env=push_env, concurrency=1)
    with apns_clean.down():
        task_id = enqueue.notify_users([1], "nobody home")
        entry = wait_for(lambda: DeadLetterStore(data, get_settings()).get(task_id),
                         timeout=40, what="dead letter")
    assert entry.reason == "exhausted" and entry.attempts == 4
    assert entry.error.startswith("TransientError: 1 device(s) to retry")


def test_a_worker_shutting_down_says_goaway_to_apns(
        push_env: dict, apns_clean: ApnsStandin, apns_key: ApnsKey, data: redis.Redis,
        workers: WorkerFactory) -> None:
    registry(data).register(1, apns_key.topic, tok(1))
    worker = workers("io", env=push_env, concurrency=2)
    enqueue.notify_users([1], "bye")
    wait_for(lambda: apns_clean.deliveries(tok(1)), what="the delivery")
    assert apns_clean.goaways_received == 0
    assert worker.terminate(timeout=20) == 0
    assert apns_clean.goaways_received == 1


def test_a_payload_over_4096_bytes_is_refused_before_anything_is_sent(
        push_env: dict, apns_clean: ApnsStandin, apns_key: ApnsKey, data: redis.Redis) -> None:
    from tasks.push.payload import PayloadTooLarge
    from tasks.push.send import notify

    registry(data).register(1, apns_key.topic, tok(1))
    with pytest.raises(PayloadTooLarge, match="over APNs' 4096-byte limit"):
        notify([1], "hello", "n-big", data={"blob": "x" * 4100})
    assert apns_clean.received() == [] and not counters(data).get("push.sent")

"""The device registry and APNs payloads."""

from __future__ import annotations

import json

import pytest
import redis

from config.settings import get_settings
from tasks.push.devices import DeviceRegistry
from tasks.push.payload import MAX_PAYLOAD, PayloadTooLarge, build_payload, push_type

APP, OTHER = "com.photofarm.app", "com.photofarm.studio"


def tok(n: int) -> str:
    return f"{n:064x}"


def registry(data: redis.Redis) -> DeviceRegistry:
    return DeviceRegistry(data, get_settings())


def test_register_lists_a_users_devices_across_apps(data: redis.Redis) -> None:
    reg = registry(data)
    reg.register(1, APP, tok(1), when=100.0)
    reg.register(1, OTHER, tok(2), when=200.0)
    reg.register(2, APP, tok(3), when=300.0)
    got = [(d.user_id, d.app_id, d.token, d.registered_at) for d in reg.devices([1, 2, 3])]
    assert got == [(1, APP, tok(1), 100.0), (1, OTHER, tok(2), 200.0), (2, APP, tok(3), 300.0)]


def test_a_token_moves_with_its_device_to_a_new_user(data: redis.Redis) -> None:
    reg = registry(data)
    reg.register(1, APP, tok(1), when=100.0)
    reg.register(2, APP, tok(1), when=150.0)
    assert [(d.user_id, d.token) for d in reg.devices([1, 2])] == [(2, tok(1))]


def test_410_prunes_only_registrations_older_than_apples_timestamp(data: redis.Redis) -> None:
    reg = registry(data)
    reg.register(1, APP, tok(1), when=100.0)
    reg.register(1, APP, tok(2), when=500.0)  # re-registered after the token went bad
    assert reg.prune(APP, tok(1), invalid_since=200.0) is True
    assert reg.prune(APP, tok(2), invalid_since=200.0) is False
    assert reg.prune(APP, tok(9)) is False  # unknown: nothing to do
    assert [d.token for d in reg.devices([1])] == [tok(2)]
    assert reg.unregister(APP, tok(2)) is True and reg.devices([1]) == []


@pytest.mark.parametrize(("app", "token", "message"), [
    (APP, "abc", "device token must be"), (APP, tok(0xABC).upper(), "device token must be"),
    ("bad app id!", tok(1), "app id must be a bundle id"),
])
def test_malformed_tokens_and_apps_are_refused(data: redis.Redis, app: str, token: str,
                                               message: str) -> None:
    with pytest.raises(ValueError, match=message):
        registry(data).register(1, app, token)


def test_payloads_are_compact_and_refused_over_4096_bytes() -> None:
    body = build_payload("Anna liked your photo", badge=3, sound="default",
                         data={"photo": 17})
    assert json.loads(body) == {"aps": {"alert": "Anna liked your photo", "badge": 3,
                                        "sound": "default"}, "photo": 17}
    assert b" " not in body.replace(b"Anna liked your photo", b"")
    assert json.loads(build_payload(content_available=True)) == {"aps": {"content-available": 1}}
    assert push_type("hi", False) == "alert" and push_type(None, True) == "background"
    filler = "x" * (MAX_PAYLOAD - len(build_payload("", data={"f": ""})))
    assert len(build_payload("", data={"f": filler})) == MAX_PAYLOAD
    with pytest.raises(PayloadTooLarge, match="4097 bytes, over APNs' 4096-byte limit"):
        build_payload("", data={"f": filler + "x"})
    with pytest.raises(Exception, match="reserved key 'aps'"):
        build_payload("hi", data={"aps": {}})

"""The demo's APNs stand-in (workers/demo_apns.py) reached by the farm's own APNs client, configured
from the env the stand-in hands the workers: a push lands and is recorded, answered as Apple
answers (200 and an apns-id), over TLS the client verified with the stand-in's CA file; its key
and certificate files are private and gone with it."""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tasks.push.apns import apps, client, token
from tasks.push.apns.apps import App, parse_apps
from tasks.push.apns.client import PushRequest
from workers.demo_apns import ApnsStandIn, device_token


@pytest.fixture
def standin(tmp_path: Path, data: redis.Redis) -> Iterator[ApnsStandIn]:
    """A running stand-in; a clean token cache and data Redis (the provider token lives there)."""
    apps.reset()
    token.clear_cache()
    with ApnsStandIn(tmp_path / "apns") as server:
        yield server
    client.close()  # this test's connections go with it: the next starts from none
    token.clear_cache()


def app_from_env(standin: ApnsStandIn) -> App:
    """The app exactly as an io worker reads it from FARM_APNS_APPS and FARM_APNS_CA_FILE."""
    env = standin.env()
    [app] = parse_apps(env["FARM_APNS_APPS"], env["FARM_APNS_CA_FILE"])
    return app


def test_a_push_through_the_farms_client_lands_in_the_standin(standin: ApnsStandIn) -> None:
    app = app_from_env(standin)
    assert app.app_id == standin.bundle_id and app.endpoint == standin.endpoint
    assert app.ca_file == standin.ca_file
    payload = json.dumps({"aps": {"alert": "Your photo has a new like", "badge": 1}}).encode()
    named = str(uuid.uuid4())
    first = client.send(app, PushRequest(device_token(1), payload, apns_id=named))
    assert (first.status, first.reason, first.apns_id) == (200, None, named)
    second = client.send(app, PushRequest(device_token(2), payload, collapse_id="like"))
    assert second.status == 200 and second.apns_id and uuid.UUID(second.apns_id)
    pushes = standin.received()
    assert [(p.token, p.topic, p.status, p.apns_id) for p in pushes] == [
        (device_token(1), standin.bundle_id, 200, named),
        (device_token(2), standin.bundle_id, 200, second.apns_id)]
    assert pushes[0].payload == {"aps": {"alert": "Your photo has a new like", "badge": 1}}
    assert pushes[0].alert == "Your photo has a new like" and pushes[0].ok


def test_only_a_verified_server_and_a_signed_token_get_through(standin: ApnsStandIn) -> None:
    app = app_from_env(standin)
    payload = b'{"aps":{"alert":"hi"}}'
    # Without the stand-in's CA file the client trusts only the system's CAs, and refuses it.
    untrusted = client.send(dataclasses.replace(app, ca_file=None),
                            PushRequest(device_token(1), payload))
    assert untrusted.status == 0 and "CERTIFICATE_VERIFY_FAILED" in (untrusted.error or "")
    assert standin.received() == []
    # A provider token it cannot verify: Apple's 403, recorded as answered.
    forged = client.send(app, PushRequest(device_token(1), payload), token="not.a.jwt")
    assert (forged.status, forged.reason) == (403, "InvalidProviderToken")
    assert client.send(app, PushRequest(device_token(1), payload)).status == 200
    assert [p.status for p in standin.received()] == [403, 200]


def test_its_secrets_are_private_and_go_with_it(tmp_path: Path) -> None:
    directory = tmp_path / "apns"
    with ApnsStandIn(directory) as standin:
        assert directory.stat().st_mode & 0o777 == 0o700
        files = sorted(p.name for p in directory.iterdir())
        assert files == sorted([standin.key_path.name, "ca.pem"])  # the server's key: loaded, gone
        assert {p.stat().st_mode & 0o777 for p in directory.iterdir()} == {0o600}
        assert "PRIVATE KEY" in standin.key_path.read_text()
        assert "PRIVATE KEY" not in json.dumps(standin.env())
    assert list(directory.iterdir()) == []

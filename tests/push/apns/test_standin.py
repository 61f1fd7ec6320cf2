"""The APNs stand-in answers as Apple's provider API does, so the push tests can trust it: checked
here with the clients the farm uses (httpx over HTTP/2, PyJWT) and with h2 directly."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import h2.config
import h2.connection
import h2.events
import hpack
import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from tests.support.apns_standin import (
    MAX_STREAMS,
    ApnsKey,
    ApnsStandin,
    H2Error,
    HpackDecoder,
    make_key,
    provider_token,
)

TOKEN = "a" * 64
ALERT = {"aps": {"alert": {"title": "New photo", "body": "ana posted a photo"}}}


def device() -> str:
    return uuid.uuid4().hex + uuid.uuid4().hex


@pytest.fixture
def client(apns_clean: ApnsStandin) -> Iterator[httpx.Client]:
    with httpx.Client(http2=True, verify=apns_clean.client_context(), timeout=10) as c:
        yield c


def push(client: httpx.Client, apns: ApnsStandin, key: ApnsKey, token: str = TOKEN, *,
         payload: Any = ALERT, content: bytes | None = None, jwt_: str | None = None,
         **headers: str) -> httpx.Response:
    """POST one notification the way the farm's adapter should; ``headers`` override (apns_topic=
    "x"), and an empty string drops one."""
    sent = {"authorization": f"bearer {jwt_ or key.sign()}", "apns-topic": key.topic,
            "apns-push-type": "alert", "apns-priority": "10"}
    sent.update({name.replace("_", "-"): value for name, value in headers.items()})
    body = content if content is not None else json.dumps(payload).encode()
    return client.post(f"{apns.endpoint}/3/device/{token}", content=body,
                       headers={k: v for k, v in sent.items() if v})


def reason(response: httpx.Response) -> str:
    assert response.headers["content-type"] == "application/json"
    return str(response.json()["reason"])


def test_accepts_a_push_over_http2_and_records_it(apns: ApnsStandin, apns_key: ApnsKey,
                                                  client: httpx.Client) -> None:
    token = apns_key.sign()
    given = str(uuid.uuid4())
    first = push(client, apns, apns_key, jwt_=token, apns_id=given, apns_collapse_id="photo-1")
    second = push(client, apns, apns_key, jwt_=token)

    assert first.http_version == "HTTP/2"
    assert first.status_code == 200 and first.content == b""
    assert first.headers["apns-id"] == given  # echoed ...
    assert uuid.UUID(second.headers["apns-id"])  # ... or made up
    seen = apns.deliveries(TOKEN)
    assert [r.apns_id for r in seen] == [given, second.headers["apns-id"]]
    assert seen[0].payload == ALERT and seen[0].headers["apns-collapse-id"] == "photo-1"
    assert (seen[0].kid, seen[0].jwt) == (apns_key.key_id, token)
    assert seen[0].iat is not None and abs(seen[0].iat - time.time()) < 5
    assert apns.jwts_seen() == [token]


def test_speaks_http2_only(apns: ApnsStandin, apns_key: ApnsKey) -> None:
    with httpx.Client(http2=False, verify=apns.client_context()) as http1, \
            pytest.raises(httpx.TransportError):
        push(http1, apns, apns_key)
    assert apns.received() == []


@pytest.mark.parametrize(("script", "status", "why"), [
    (lambda a, t: a.script(t, 400), 400, "BadDeviceToken"),
    (lambda a, t: a.script(t, 400, "DeviceTokenNotForTopic"), 400, "DeviceTokenNotForTopic"),
    (lambda a, t: a.bind(t, "com.other.app"), 400, "DeviceTokenNotForTopic"),
    (lambda a, t: a.script(t, 429), 429, "TooManyRequests"),
    (lambda a, t: a.script(t, 500), 500, "InternalServerError"),
    (lambda a, t: a.script(t, 503), 503, "ServiceUnavailable"),
    (lambda a, t: a.script(t, 403), 403, "ExpiredProviderToken"),
])
def test_scripted_answers_per_device_token(apns: ApnsStandin, apns_key: ApnsKey,
                                           client: httpx.Client, script: Any, status: int,
                                           why: str) -> None:
    token, other = device(), device()
    script(apns, token)
    for _ in range(2):  # every time, not once
        answer = push(client, apns, apns_key, token)
        assert (answer.status_code, reason(answer)) == (status, why)
        assert uuid.UUID(answer.headers["apns-id"])
    assert push(client, apns, apns_key, other).status_code == 200  # only that token
    assert apns.deliveries(token) == [] and len(apns.received(token)) == 2


def test_unregistered_token_answers_410_with_its_timestamp(
        apns: ApnsStandin, apns_key: ApnsKey, client: httpx.Client) -> None:
    token, stamp = device(), 1_700_000_000_000
    apns.unregister(token, timestamp=stamp)
    answer = push(client, apns, apns_key, token)
    assert answer.status_code == 410
    assert answer.json() == {"reason": "Unregistered", "timestamp": stamp}
    apns.unregister(other := device())  # by default: when it was unregistered
    assert abs(push(client, apns, apns_key, other).json()["timestamp"] / 1000 - time.time()) < 5


def test_fails_n_times_then_succeeds_with_retry_after(
        apns: ApnsStandin, apns_key: ApnsKey, client: httpx.Client) -> None:
    token = device()
    apns.fail(token, 2, status=429, retry_after=7)
    apns.fail(token, 1, status=500)
    answers = [push(client, apns, apns_key, token) for _ in range(5)]
    assert [a.status_code for a in answers] == [429, 429, 500, 200, 200]
    assert answers[0].headers["retry-after"] == "7" and "retry-after" not in answers[2].headers
    assert len(apns.deliveries(token)) == 2


def test_fail_all_answers_everything_until_switched_off(
        apns: ApnsStandin, apns_key: ApnsKey, client: httpx.Client) -> None:
    apns.fail_all(503, retry_after=2)
    answer = push(client, apns, apns_key, device(), apns_topic="not.checked.first")
    assert (answer.status_code, reason(answer), answer.headers["retry-after"]) == \
        (503, "ServiceUnavailable", "2")
    apns.fail_all(None)
    assert push(client, apns, apns_key).status_code == 200
    apns.fail_all(500, times=1)
    assert [push(client, apns, apns_key).status_code for _ in range(2)] == [500, 200]


@pytest.mark.parametrize("token", ["a" * 63, "a" * 65, "g" * 64, "a" * 62 + "%20"])
def test_malformed_device_token_is_bad(apns: ApnsStandin, apns_key: ApnsKey,
                                       client: httpx.Client, token: str) -> None:
    answer = push(client, apns, apns_key, token)
    assert (answer.status_code, reason(answer)) == (400, "BadDeviceToken")


def test_path_and_method(apns: ApnsStandin, apns_key: ApnsKey, client: httpx.Client) -> None:
    auth = {"authorization": f"bearer {apns_key.sign()}", "apns-topic": apns_key.topic,
            "apns-push-type": "alert"}
    missing = client.post(f"{apns.endpoint}/3/device/", headers=auth, json=ALERT)
    wrong = client.post(f"{apns.endpoint}/2/device/{TOKEN}", headers=auth, json=ALERT)
    get = client.get(f"{apns.endpoint}/3/device/{TOKEN}", headers=auth)
    assert (missing.status_code, reason(missing)) == (400, "MissingDeviceToken")
    assert (wrong.status_code, reason(wrong)) == (404, "BadPath")
    assert (get.status_code, reason(get)) == (405, "MethodNotAllowed")


def test_provider_token_checks(apns: ApnsStandin, apns_key: ApnsKey, client: httpx.Client,
                               tmp_path: Any) -> None:
    stranger, _ = make_key(tmp_path, key_id="STRANGER01")  # never registered
    p8 = apns_key.p8_path.read_bytes()
    good = apns_key.sign()
    head, claims, signature = good.split(".")
    cases = {
        "": "MissingProviderToken",
        stranger.sign(): "InvalidProviderToken",  # unknown kid
        provider_token(p8, apns_key.key_id, "OTHERTEAM1"): "InvalidProviderToken",  # wrong iss
        f"{head}.{claims}.{signature[::-1]}": "InvalidProviderToken",  # bad signature
        jwt.encode({"iss": apns_key.team_id, "iat": int(time.time())}, "s" * 32,
                   algorithm="HS256", headers={"kid": apns_key.key_id}): "InvalidProviderToken",
        "not-a-jwt": "InvalidProviderToken",
        apns_key.sign(iat=int(time.time()) - 3601): "ExpiredProviderToken",  # over an hour
    }
    for token, why in cases.items():
        sent = {"authorization": f"bearer {token}" if token else ""}
        answer = push(client, apns, apns_key, jwt_="-", **sent)
        assert (answer.status_code, reason(answer)) == (403, why), token
    assert push(client, apns, apns_key, jwt_=apns_key.sign(iat=int(time.time()) - 3500)) \
        .status_code == 200
    assert apns.deliveries()[0].kid == apns_key.key_id


def test_token_lifetime_and_expiry_are_settable(apns: ApnsStandin, apns_key: ApnsKey,
                                                client: httpx.Client) -> None:
    token = apns_key.sign(iat=int(time.time()) - 20)
    assert push(client, apns, apns_key, jwt_=token).status_code == 200
    apns.token_lifetime = 10
    expired = push(client, apns, apns_key, jwt_=token)
    assert (expired.status_code, reason(expired)) == (403, "ExpiredProviderToken")
    assert apns.received()[-1].kid == apns_key.key_id  # still told apart from a forgery

    apns.token_lifetime = 3600
    fresh = apns_key.sign()
    assert push(client, apns, apns_key, jwt_=fresh).status_code == 200
    apns.expire_seen_tokens()  # as if an hour had passed for every token so far
    assert push(client, apns, apns_key, jwt_=fresh).status_code == 403
    resigned = apns_key.sign()  # same iat second, but a new signature: a new token
    assert push(client, apns, apns_key, jwt_=resigned).status_code == 200
    assert apns.jwts_seen() == [token, fresh, resigned]


def test_minting_tokens_too_often_is_throttled(apns: ApnsStandin, apns_key: ApnsKey,
                                               client: httpx.Client) -> None:
    apns.min_token_interval = 60  # Apple: no more than one new token every 20 minutes
    first, second = apns_key.sign(), apns_key.sign()
    assert push(client, apns, apns_key, jwt_=first).status_code == 200
    throttled = push(client, apns, apns_key, jwt_=second)
    assert (throttled.status_code, reason(throttled)) == (429, "TooManyProviderTokenUpdates")
    assert push(client, apns, apns_key, jwt_=first).status_code == 200  # the shared one is fine


def test_topic_checks(apns: ApnsStandin, apns_key: ApnsKey, client: httpx.Client,
                      tmp_path: Any) -> None:
    other = apns.add_key(tmp_path, topic="com.other.app")  # another team's app
    missing = push(client, apns, apns_key, apns_topic="")
    foreign = push(client, apns, apns_key, apns_topic=other.topic)
    assert (missing.status_code, reason(missing)) == (400, "MissingTopic")
    assert (foreign.status_code, reason(foreign)) == (400, "TopicDisallowed")
    assert push(client, apns, other).status_code == 200
    # The key also covers the topics Apple derives from its apps' bundle ids.
    voip = push(client, apns, apns_key, apns_topic=f"{apns_key.topic}.voip", apns_push_type="voip")
    assert voip.status_code == 200
    made_up = push(client, apns, apns_key, apns_topic=f"{apns_key.topic}.other")
    assert (made_up.status_code, reason(made_up)) == (400, "TopicDisallowed")


@pytest.mark.parametrize(("headers", "why"), [
    ({"apns_push_type": ""}, "InvalidPushType"),
    ({"apns_push_type": "banner"}, "InvalidPushType"),
    ({"apns_priority": "7"}, "BadPriority"),
    ({"apns_expiration": "tomorrow"}, "BadExpirationDate"),
    ({"apns_id": "not-a-uuid"}, "BadMessageId"),
    ({"apns_collapse_id": "c" * 65}, "BadCollapseId"),
])
def test_header_checks(apns: ApnsStandin, apns_key: ApnsKey, client: httpx.Client,
                       headers: dict[str, str], why: str) -> None:
    answer = push(client, apns, apns_key, **headers)
    assert (answer.status_code, reason(answer)) == (400, why)


def test_good_optional_headers_pass(apns: ApnsStandin, apns_key: ApnsKey,
                                    client: httpx.Client) -> None:
    answer = push(client, apns, apns_key, apns_collapse_id="c" * 64, apns_priority="5",
                  apns_expiration=str(int(time.time()) + 3600), apns_push_type="background")
    assert answer.status_code == 200


def test_duplicate_headers(apns: ApnsStandin, apns_key: ApnsKey, client: httpx.Client) -> None:
    headers = [("authorization", f"bearer {apns_key.sign()}"), ("apns-topic", apns_key.topic),
               ("apns-topic", apns_key.topic), ("apns-push-type", "alert")]
    answer = client.post(f"{apns.endpoint}/3/device/{TOKEN}", headers=headers, json=ALERT)
    assert (answer.status_code, reason(answer)) == (400, "DuplicateHeaders")


def sized(n: int) -> bytes:
    """A JSON payload of exactly ``n`` bytes."""
    body = json.dumps({"aps": {"alert": ""}}).encode()
    return json.dumps({"aps": {"alert": "x" * (n - len(body))}}).encode()


def test_payload_limits(apns: ApnsStandin, apns_key: ApnsKey, client: httpx.Client) -> None:
    assert len(sized(4096)) == 4096
    assert push(client, apns, apns_key, content=sized(4096)).status_code == 200
    too_big = push(client, apns, apns_key, content=sized(4097))
    assert (too_big.status_code, reason(too_big)) == (413, "PayloadTooLarge")
    assert push(client, apns, apns_key, content=sized(5120), apns_push_type="voip") \
        .status_code == 200  # VoIP gets 5 KB
    empty = push(client, apns, apns_key, content=b"")
    assert (empty.status_code, reason(empty)) == (400, "PayloadEmpty")
    assert push(client, apns, apns_key, content=b"{not json").status_code == 400
    huge = push(client, apns, apns_key, content=b"x" * 200_000)  # many DATA frames
    assert huge.status_code == 413 and apns.received()[-1].size > 4097


def test_many_concurrent_streams_on_one_connection(apns: ApnsStandin,
                                                   apns_key: ApnsKey) -> None:
    token, n = apns_key.sign(), 500
    tokens = [device() for _ in range(n)]
    headers = {"authorization": f"bearer {token}", "apns-topic": apns_key.topic,
               "apns-push-type": "alert"}

    async def burst() -> list[int]:
        async with httpx.AsyncClient(http2=True, verify=apns.client_context(),
                                     timeout=30) as client:
            answers = await asyncio.gather(*(client.post(f"{apns.endpoint}/3/device/{t}",
                                                         headers=headers, json=ALERT)
                                             for t in tokens))
            return [a.status_code for a in answers]

    assert asyncio.run(burst()) == [200] * n
    seen = apns.deliveries()
    assert sorted(r.token for r in seen) == sorted(tokens)
    assert len({r.connection for r in seen}) == 1 and apns.connections_made == 1
    assert apns.jwts_seen() == [token]


def test_advertises_1000_streams_and_serves_them_in_flight(apns: ApnsStandin,
                                                           apns_key: ApnsKey) -> None:
    """With h2 directly: all 1000 requests are sent before any answer is read."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    context = apns.client_context()
    context.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", apns.port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        conn.initiate_connection()
        tls.sendall(conn.data_to_send())
        while conn.remote_settings.max_concurrent_streams != MAX_STREAMS:
            conn.receive_data(tls.recv(65536))
        headers = [(":method", "POST"), (":scheme", "https"), (":authority", "127.0.0.1"),
                   (":path", f"/3/device/{TOKEN}"), ("authorization", f"bearer {apns_key.sign()}"),
                   ("apns-topic", apns_key.topic), ("apns-push-type", "alert")]
        for _ in range(MAX_STREAMS):
            stream = conn.get_next_available_stream_id()
            conn.send_headers(stream, headers)
            conn.send_data(stream, b'{"aps":{}}', end_stream=True)
        tls.sendall(conn.data_to_send())
        statuses: list[bytes] = []
        while len(statuses) < MAX_STREAMS:
            for event in conn.receive_data(tls.recv(65536)):
                if isinstance(event, h2.events.ResponseReceived):
                    statuses.append(dict(event.headers)[b":status"])
            tls.sendall(conn.data_to_send())
    assert statuses == [b"200"] * MAX_STREAMS
    assert len(apns.deliveries(TOKEN)) == MAX_STREAMS


def test_stop_and_restart_on_the_same_port(apns: ApnsStandin, apns_key: ApnsKey,
                                           client: httpx.Client) -> None:
    endpoint = apns.endpoint
    assert push(client, apns, apns_key).status_code == 200
    with apns.down():
        assert not apns.running
        with httpx.Client(http2=True, verify=apns.client_context()) as fresh, \
                pytest.raises(httpx.ConnectError):
            push(fresh, apns, apns_key)
    assert apns.running and apns.endpoint == endpoint
    with httpx.Client(http2=True, verify=apns.client_context()) as fresh:
        assert push(fresh, apns, apns_key).status_code == 200
    assert len(apns.deliveries(TOKEN)) == 2


def test_a_test_that_leaves_it_down_does_not_break_the_next(apns: ApnsStandin) -> None:
    apns.stop()  # the apns_clean fixture of the next test starts it again


def test_it_is_up_again(apns_clean: ApnsStandin) -> None:
    assert apns_clean.running and apns_clean.received() == []


def test_other_processes_trust_it_by_path_and_share_the_token(
        apns: ApnsStandin, apns_key: ApnsKey) -> None:
    token = apns_key.sign()
    script = (
        "import ssl, sys, httpx\n"
        "endpoint, ca, token, topic = sys.argv[1:]\n"
        "with httpx.Client(http2=True, verify=ssl.create_default_context(cafile=ca)) as c:\n"
        "    r = c.post(f'{endpoint}/3/device/' + 'b' * 64, json={'aps': {}}, headers={\n"
        "        'authorization': 'bearer ' + token, 'apns-topic': topic,\n"
        "        'apns-push-type': 'alert'})\n"
        "    print(r.http_version, r.status_code)\n")
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", script, apns.endpoint, str(apns.ca_pem_path),
                              token, apns_key.topic], capture_output=True, text=True, timeout=60)
        assert out.stdout.split() == ["HTTP/2", "200"], out.stderr
    assert len(apns.deliveries("b" * 64)) == 2 and apns.jwts_seen() == [token]


def test_apns_key_is_a_p8_file_apple_style(apns_key: ApnsKey) -> None:
    key_id, team_id, topic, p8_path = apns_key
    assert len(key_id) == len(team_id) == 10 and topic
    pem = p8_path.read_text()
    assert pem.startswith("-----BEGIN PRIVATE KEY-----")  # PKCS#8, as Apple's downloads are
    private = load_pem_private_key(p8_path.read_bytes(), password=None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    token = apns_key.sign()
    assert jwt.get_unverified_header(token) == {"alg": "ES256", "kid": key_id, "typ": "JWT"}
    claims = jwt.decode(token, private.public_key(), algorithms=["ES256"])
    assert claims["iss"] == team_id and set(claims) == {"iss", "iat"}


def test_hpack_decoder_reads_what_hpack_writes() -> None:
    """The stand-in's own HPACK decoder against the hpack package's encoder: Huffman and plain
    strings, the dynamic table filling and evicting, size updates, never-indexed fields."""
    encoder, decoder = hpack.Encoder(), HpackDecoder()
    for i in range(300):
        if i == 150:
            encoder.header_table_size = 256  # sends a dynamic table size update
        headers = [(":method", "POST"), (":path", f"/3/device/{device()}"),
                   hpack.NeverIndexedHeaderTuple("authorization", f"bearer {'j' * 150}"),
                   ("apns-topic", "com.photofarm.app"), ("apns-id", str(uuid.uuid4())),
                   ("x-long", "v" * (i * 3)), ("x-caption", f"café #{i} 📷")]
        block = encoder.encode(headers, huffman=i % 2 == 0)
        assert decoder.decode(block) == [(str(n), str(v)) for n, v in headers]
    for bad in (b"\xff\xff\xff\x0f",  # an index far past both tables
                b"\x00\x01a\x85\xff\xff\xff\xff\xff",  # Huffman-coded EOS
                b"\x3f\xe2\x1f"):  # a table of 4097 bytes, over our 4096
        with pytest.raises(H2Error):
            decoder.decode(bad)

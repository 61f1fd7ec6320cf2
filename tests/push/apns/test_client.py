"""The APNs adapter against the local stand-in (real HTTP/2 over TLS): headers and the provider
JWT as Apple checks them, one farm-wide token across sends, threads and forked processes, its
refresh and compare-and-set re-signing, many streams on one connection, transport failures as
results, and a fresh loop and connection in a forked child."""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jwt
import pytest
import redis
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from config.settings import get_settings
from tasks.core import metrics
from tasks.push.apns import apps, client, token
from tasks.push.apns.apps import App, AppConfigError, parse_apps, provision
from tasks.push.apns.client import MAX_IN_FLIGHT, PushRequest, PushResult, send, send_many
from tests.support.apns_standin import ApnsKey, ApnsStandin, _Connection
from tests.support.workers import wait_for
from workers.embedded_redis import free_port

DEVICE = "ab" * 32
PAYLOAD = json.dumps({"aps": {"alert": "New photo from @ana"}}).encode()


def device(i: int) -> str:
    return f"{i:064x}"


def signings(data: redis.Redis) -> int:
    return metrics.counters(data, get_settings()).get(token.SIGNED, 0)


@pytest.fixture
def app(apns_key: ApnsKey, apns_clean: ApnsStandin, data: redis.Redis) -> Iterator[App]:
    """An app provisioned against the stand-in, a clean token cache and a clean data Redis."""
    apps.reset()
    token.clear_cache()
    yield provision(apns_key.topic, key_id=apns_key.key_id, team_id=apns_key.team_id,
                    key_path=apns_key.p8_path, environment=apns_clean.endpoint,
                    ca_file=apns_clean.ca_pem_path)
    apps.reset()
    token.clear_cache()


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts TLS connections the stand-in accepts (it does not record them itself)."""
    made: list[int] = []
    original = _Connection.connection_made

    def counting(self: _Connection, transport: Any) -> None:
        made.append(1)
        original(self, transport)

    monkeypatch.setattr(_Connection, "connection_made", counting)
    return made


# -- apps -----------------------------------------------------------------------------------------

def test_apps_from_compact_string_and_json_file(tmp_path: Path) -> None:
    key = tmp_path / "AuthKey.p8"
    key.write_text("-----BEGIN PRIVATE KEY-----\nsecret\n-----END PRIVATE KEY-----\n")
    ca = tmp_path / "ca.pem"
    ca.write_text("ca")
    one, two = parse_apps(f"com.ex.photos|KEY1234567|TEAM123456|{key},"
                          f"com.ex.beta|KEY7654321|TEAM123456|{key}|https://127.0.0.1:8443/",
                          ca_file=ca)
    assert (one.endpoint, one.ca_file) == ("https://api.push.apple.com", None)
    assert (two.endpoint, two.ca_file) == ("https://127.0.0.1:8443", ca)
    listing = tmp_path / "apps.json"
    listing.write_text(json.dumps([{"app_id": "com.ex.photos", "key_id": "KEY1234567",
                                    "team_id": "TEAM123456", "key_path": str(key),
                                    "environment": "sandbox"}]))
    (sandbox,) = parse_apps(str(listing))
    assert sandbox.endpoint == "https://api.sandbox.push.apple.com"
    assert "secret" not in repr(sandbox)  # the key is read when signing, never held
    with pytest.raises(AppConfigError, match="key_id must be 10"):
        parse_apps(f"KEY1234567|com.ex.photos|TEAM123456|{key}")
    with pytest.raises(AppConfigError, match="does not exist"):
        parse_apps("com.ex.photos|KEY1234567|TEAM123456|/nope.p8")
    with pytest.raises(AppConfigError, match="environment must be"):
        provision("com.ex.photos", key_id="KEY1234567", team_id="TEAM123456", key_path=key,
                  environment="http://plain")
    with pytest.raises(AppConfigError, match="not provisioned"):
        apps.get_app("com.ex.unknown")


def test_apps_load_from_settings_on_first_use(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    key = tmp_path / "AuthKey.p8"
    key.write_text("-----BEGIN PRIVATE KEY-----\nsecret\n-----END PRIVATE KEY-----\n")
    monkeypatch.setenv("FARM_APNS_APPS", f"com.ex.photos|KEY1234567|TEAM123456|{key}|sandbox")
    get_settings.cache_clear()
    apps.reset()
    try:
        assert apps.get_app("com.ex.photos").endpoint == "https://api.sandbox.push.apple.com"
        with pytest.raises(AppConfigError, match="key material") as caught:
            parse_apps(key.read_text())
        assert "secret" not in str(caught.value)
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
        apps.reset()


# -- what arrives at Apple ------------------------------------------------------------------------

def test_request_headers_and_provider_jwt_as_apple_checks_them(app: App, apns_key: ApnsKey,
                                                                apns_clean: ApnsStandin) -> None:
    apns_id = "123e4567-e89b-12d3-a456-426614174000"
    result = send(app, PushRequest(DEVICE, PAYLOAD, push_type="alert", priority=5,
                                   expiration=0, collapse_id="photo-42", apns_id=apns_id))
    assert result == PushResult(DEVICE, 200, apns_id=apns_id)
    (seen,) = apns_clean.received()  # the stand-in speaks HTTP/2 only (ALPN h2)
    assert seen.token == DEVICE and seen.payload == json.loads(PAYLOAD)
    assert {k: v for k, v in seen.headers.items() if k.startswith("apns-")} == {
        "apns-topic": apns_key.topic, "apns-push-type": "alert", "apns-priority": "5",
        "apns-expiration": "0", "apns-collapse-id": "photo-42", "apns-id": apns_id}
    assert seen.jwt is not None and seen.headers["authorization"] == f"bearer {seen.jwt}"
    # Exactly Apple's header {alg, kid}, and claims {iss, iat} verifying with the public key.
    assert jwt.get_unverified_header(seen.jwt) == {"alg": "ES256", "kid": apns_key.key_id}
    public = load_pem_private_key(apns_key.p8_path.read_bytes(), None).public_key()
    claims = jwt.decode(seen.jwt, public, algorithms=["ES256"], issuer=apns_key.team_id)
    assert set(claims) == {"iss", "iat"} and abs(claims["iat"] - time.time()) < 5
    # A VoIP push goes to the derived topic.
    send(app, PushRequest(DEVICE, PAYLOAD, push_type="voip"))
    assert apns_clean.received()[-1].headers["apns-topic"] == f"{apns_key.topic}.voip"


def test_every_device_gets_a_structured_result(app: App, apns_clean: ApnsStandin) -> None:
    apns_clean.unregister(device(1), timestamp=1_700_000_000_000)
    apns_clean.bind(device(3), "com.other.app")
    apns_clean.fail(device(4), times=1, status=429, retry_after=7)
    apns_clean.fail(device(5), times=1, status=503)
    reqs = [PushRequest(device(i), PAYLOAD) for i in range(6)]
    reqs[2] = PushRequest("not-hex", PAYLOAD)
    reqs.append(PushRequest(device(6), b'{"aps":{"alert":"' + b"x" * 5000 + b'"}}'))
    results = send_many(app, reqs)
    assert [r.device_token for r in results] == [r.device_token for r in reqs]  # in order
    got = [(r.status, r.reason) for r in results]
    assert got == [(200, None), (410, "Unregistered"), (400, "BadDeviceToken"),
                   (400, "DeviceTokenNotForTopic"), (429, "TooManyRequests"),
                   (503, "ServiceUnavailable"), (413, "PayloadTooLarge")]
    assert results[1].timestamp == 1_700_000_000_000
    assert results[4].retry_after == 7
    assert all(r.apns_id for r in results if r.device_token != "not-hex")


def test_expired_provider_token_is_resigned_once_and_retried(app: App, apns_clean: ApnsStandin,
                                                             data: redis.Redis) -> None:
    first = token.get_token(app)
    assert send(app, PushRequest(DEVICE, PAYLOAD)).ok
    apns_clean.expire_seen_tokens()
    results = send_many(app, [PushRequest(device(i), PAYLOAD) for i in range(50)])
    assert {(r.status, r.reason) for r in results} == {(403, "ExpiredProviderToken")}
    fresh = token.resign(app, first)  # what the push task does, once per batch
    assert fresh != first
    assert all(r.ok for r in send_many(app, [PushRequest(device(i), PAYLOAD) for i in range(50)],
                                       token=fresh))
    assert token.get_token(app) == fresh
    assert signings(data) == 2


# -- one token for the farm -----------------------------------------------------------------------

def _child_sends(app: App, n: int, out: Any) -> None:
    results = send_many(app, [PushRequest(device(i), PAYLOAD) for i in range(n)])
    out.put((client.process_info(), sum(r.ok for r in results), token.get_token(app)))


def test_one_token_shared_across_sends_threads_and_processes(app: App, apns_clean: ApnsStandin,
                                                             data: redis.Redis) -> None:
    with ThreadPoolExecutor(16) as pool:  # Celery's io pool: many threads, one process
        batches = list(pool.map(
            lambda b: send_many(app, [PushRequest(device(b * 10 + i), PAYLOAD)
                                      for i in range(10)]), range(32)))
    assert all(r.ok for batch in batches for r in batch)
    token.clear_cache()  # the children must find it in Redis, not inherit it
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_child_sends, args=(app, 100, out)) for _ in range(2)]
    for p in procs:
        p.start()
    answers = [out.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(10)
        assert p.exitcode == 0
    assert [sent for _, sent, _ in answers] == [100, 100]
    assert len({info[0] for info, _, _ in answers}) == 2  # two processes, each its own adapter
    assert {tok for _, _, tok in answers} == {token.get_token(app)}
    assert signings(data) == 1
    assert len(apns_clean.jwts_seen()) == 1  # Apple saw one token from the whole "farm"
    assert len(apns_clean.deliveries()) == 520


def test_token_is_resigned_after_its_refresh_age(app: App, data: redis.Redis,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(token, "CHECK_EVERY", 0.0)  # re-read Redis on every call
    first = token.get_token(app)
    key = get_settings().key("apns", "token", app.team_id, app.key_id)
    assert data.ttl(key) > 3500
    data.hset(key, "iat", int(time.time()) - 35 * 60)  # younger than 40 min: kept
    assert token.get_token(app) == first
    data.hset(key, "iat", int(time.time()) - 51 * 60)  # older than 50 min: re-signed
    second = token.get_token(app)
    assert second != first and signings(data) == 2
    assert token.get_token(app) == second
    assert abs(int(data.hget(key, "iat")) - time.time()) < 5
    # The in-process copy saves the round trip, then notices the iat moving on its own clock.
    monkeypatch.setattr(token, "CHECK_EVERY", 3600.0)
    monkeypatch.setattr(token, "_clock", lambda: time.time() + 51 * 60)
    assert token.get_token(app) not in (first, second)
    assert signings(data) == 3


def test_stale_token_found_by_many_at_once_is_signed_once(app: App, data: redis.Redis,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    first = token.get_token(app)
    key = get_settings().key("apns", "token", app.team_id, app.key_id)
    data.hset(key, "iat", int(time.time()) - 56 * 60)  # past use: everyone must wait for one
    monkeypatch.setattr(token, "CHECK_EVERY", 0.0)
    barrier = threading.Barrier(24)

    def racer(_: int) -> str:
        barrier.wait()
        return token.get_token(app)

    with ThreadPoolExecutor(24) as pool:
        got = set(pool.map(racer, range(24)))
    assert len(got) == 1 and got != {first}
    assert signings(data) == 2


def test_resign_is_compare_and_set(app: App, data: redis.Redis) -> None:
    stale = token.get_token(app)
    barrier = threading.Barrier(32)

    def racer(_: int) -> str:
        barrier.wait()
        return token.resign(app, stale)

    with ThreadPoolExecutor(32) as pool:
        got = set(pool.map(racer, range(32)))
    assert len(got) == 1 and got != {stale}
    assert signings(data) == 2  # the first signing, and exactly one re-signing
    # A late caller holding the old token gets the new one without another signing.
    assert token.resign(app, stale) == got.pop()
    assert signings(data) == 2


# -- one connection, many streams -----------------------------------------------------------------

def test_many_concurrent_sends_share_one_connection(app: App, apns_clean: ApnsStandin,
                                                    connections: list[int]) -> None:
    client.close()  # start from no connection, so the count below is this test's
    results = send_many(app, [PushRequest(device(i), PAYLOAD) for i in range(2000)])
    assert sum(r.ok for r in results) == 2000
    assert len(apns_clean.deliveries()) == 2000
    assert len(connections) == 1


def test_answers_are_handed_over_as_they_arrive(app: App, apns_clean: ApnsStandin) -> None:
    """as_completed yields each batch of answers as it comes (what push.notify marks at once),
    every request exactly once; send_many is the same, collected in order."""
    apns_clean.max_streams, apns_clean.delay = 10, 0.02  # 5 waves of 10, 20 ms apart
    client.close()  # a new connection, told the stand-in's new limit
    reqs = [PushRequest(device(i), PAYLOAD) for i in range(50)]
    started = time.monotonic()
    try:
        batches = list(client.as_completed(app, reqs))
        in_order = send_many(app, reqs)
    finally:
        client.close()  # later tests get a connection told the usual 1000 streams
    assert len(batches) >= 5
    assert sorted(i for b in batches for i, _ in b.results) == list(range(50))
    assert all(r.ok and r.device_token == reqs[i].device_token
               for b in batches for i, r in b.results)
    arrived = [b.arrived for b in batches]
    assert arrived == sorted(arrived) and arrived[0] - started < arrived[-1] - started - 0.05
    assert [r.device_token for r in in_order] == [r.device_token for r in reqs]


# -- failures without an answer -------------------------------------------------------------------

def test_transport_errors_are_results_with_status_0(app: App, apns_clean: ApnsStandin,
                                                    apns_key: ApnsKey) -> None:
    def refused_app(**kw: Any) -> App:
        return provision("com.photofarm.down", key_id=apns_key.key_id, team_id=apns_key.team_id,
                         key_path=apns_key.p8_path, **kw)

    # Nothing listening.
    down = refused_app(environment=f"https://127.0.0.1:{free_port()}",
                       ca_file=apns_clean.ca_pem_path)
    results = send_many(down, [PushRequest(device(i), PAYLOAD) for i in range(3)])
    assert [r.status for r in results] == [0, 0, 0]
    assert all("ConnectError" in (r.error or "") for r in results)
    # A certificate we do not trust (the system CAs, not the stand-in's).
    untrusted = refused_app(environment=apns_clean.endpoint)
    (result,) = send_many(untrusted, [PushRequest(DEVICE, PAYLOAD)])
    assert result.status == 0 and "CERTIFICATE_VERIFY_FAILED" in (result.error or "")
    # The server going away under a live connection: refused while it is down.
    assert send(app, PushRequest(DEVICE, PAYLOAD)).ok
    with apns_clean.down():
        result = send(app, PushRequest(DEVICE, PAYLOAD))
        assert result.status == 0 and result.error


def test_a_connection_that_died_while_idle_is_replaced(app: App, apns_clean: ApnsStandin,
                                                       connections: list[int]) -> None:
    client.close()
    assert send(app, PushRequest(DEVICE, PAYLOAD)).ok
    apns_clean.stop()  # drops the idle connection, as Apple's GOAWAY or a NAT timeout would
    apns_clean.start()
    # The reset reached the client's loop: the connection is known dead, so the next pushes
    # open a new one. (One that died unnoticed would fail the streams sent into it as unknown
    # outcomes, never resent here: the push task decides; see test_resend.py.)
    wait_for(lambda: client._process().ready(app) is None, what="the drop noticed")
    results = send_many(app, [PushRequest(device(i), PAYLOAD) for i in range(50)])
    assert all(r.ok for r in results)
    assert len(connections) == 2 and len(apns_clean.deliveries()) == 51


def test_no_answer_is_a_timeout_result(app: App, apns_key: ApnsKey, tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never speaks TLS
        silent.listen(8)
        mute = provision("com.photofarm.mute", key_id=apns_key.key_id, team_id=apns_key.team_id,
                         key_path=apns_key.p8_path,
                         environment=f"https://127.0.0.1:{silent.getsockname()[1]}")
        started = time.monotonic()
        results = send_many(mute, [PushRequest(device(i), PAYLOAD) for i in range(5)],
                            timeout=0.5)
    # One request found APNs silent; the rest of the batch was not sent into the outage.
    assert time.monotonic() - started < 1.5
    assert [(r.status, r.error) for r in results] == [(0, "timeout: no answer in 0.5s")] + [
        (0, "not sent: timeout: no answer in 0.5s")] * 4


# -- fork -----------------------------------------------------------------------------------------

def _child_reports(app: App, out: Any) -> None:
    before = client.process_info()
    ok = send(app, PushRequest(DEVICE, PAYLOAD)).ok
    out.put((before, client.process_info(), ok))


def test_a_forked_child_makes_its_own_loop_and_connection(app: App, apns_clean: ApnsStandin,
                                                          connections: list[int]) -> None:
    client.close()
    assert send(app, PushRequest(DEVICE, PAYLOAD)).ok
    parent = client.process_info()
    assert parent is not None
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    child = ctx.Process(target=_child_reports, args=(app, out))
    child.start()
    before, after, ok = out.get(timeout=30)
    child.join(10)
    assert child.exitcode == 0 and ok
    assert before is None  # the parent's loop and client were not inherited
    assert after is not None and after[0] == child.pid and after[1:] != parent[1:]
    assert len(connections) == 2  # the child opened its own
    # The child never touched the parent's connection: it still carries pushes.
    assert send(app, PushRequest(DEVICE, PAYLOAD)).ok
    assert client.process_info() == parent and len(connections) == 2


# -- throughput -----------------------------------------------------------------------------------

class DelayProxy:
    """A TCP relay adding ``delay`` seconds each way (TLS passes through untouched): the local
    stand-in answers in microseconds, Apple in tens of milliseconds."""

    def __init__(self, upstream_port: int, delay: float) -> None:
        self.upstream_port, self.delay = upstream_port, delay
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.writers: set[asyncio.StreamWriter] = set()
        self.relays: set[asyncio.Task[None]] = set()
        started = threading.Event()
        threading.Thread(target=self._run, args=(started,), daemon=True).start()
        started.wait(5)

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(
            asyncio.start_server(self._relay, "127.0.0.1", self.port))
        started.set()
        self.loop.run_forever()
        self.loop.close()

    async def _relay(self, down_r: asyncio.StreamReader, down_w: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self.writers |= {down_w, up_w}
        self.relays.add(asyncio.current_task())  # type: ignore[arg-type]

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

            async def deliver() -> None:  # in order, each chunk `delay` after it arrived
                while (item := await queue.get())[1]:
                    await asyncio.sleep(max(0.0, item[0] - self.loop.time()))
                    w.write(item[1])

            task = asyncio.ensure_future(deliver())
            try:
                while data := await r.read(65536):
                    queue.put_nowait((self.loop.time() + self.delay, data))
                queue.put_nowait((0.0, b""))
                await task
            finally:
                task.cancel()
                w.close()

        with contextlib.suppress(OSError):
            await asyncio.gather(pipe(down_r, up_w), pipe(up_r, down_w))

    def close(self) -> None:
        async def shutdown() -> None:
            self.server.close()
            for w in self.writers:
                w.transport.abort()
            if self.relays:
                await asyncio.wait(self.relays, timeout=5)

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)


def _rates(app: App, n_serial: int, n_many: int) -> tuple[float, float]:
    send(app, PushRequest(DEVICE, PAYLOAD))  # connection and token ready
    started = time.perf_counter()
    for i in range(n_serial):
        assert send(app, PushRequest(device(i), PAYLOAD)).ok
    serial = n_serial / (time.perf_counter() - started)
    started = time.perf_counter()
    results = send_many(app, [PushRequest(device(i), PAYLOAD) for i in range(n_many)])
    many = n_many / (time.perf_counter() - started)
    assert all(r.ok for r in results)
    return serial, many


def test_throughput_many_streams_vs_one_at_a_time(app: App, apns_clean: ApnsStandin,
                                                  apns_key: ApnsKey,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    local = _rates(app, 100, 1000)
    proxy = DelayProxy(apns_clean.port, delay=0.010)  # ~20 ms round trip, like a nearby APNs
    try:
        far = provision("com.photofarm.app", key_id=apns_key.key_id, team_id=apns_key.team_id,
                        key_path=apns_key.p8_path, environment=f"https://127.0.0.1:{proxy.port}",
                        ca_file=apns_clean.ca_pem_path)
        distant = _rates(far, 40, 1000)
    finally:
        proxy.close()
    with capsys.disabled():
        for name, (serial, many) in (("local stand-in", local), ("+20 ms round trip", distant)):
            print(f"\nAPNs adapter, one process, {name}: one at a time {serial:,.0f}/s, "
                  f"1000 at once ({MAX_IN_FLIGHT} streams) {many:,.0f}/s ({many / serial:.1f}x)")
    assert distant[1] > 3 * distant[0]

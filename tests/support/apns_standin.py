"""A local stand-in for Apple's APNs HTTP/2 provider API, for the push tests.

It answers as Apple does (see Apple's "Sending notification requests to APNs" and "Handling
notification responses from APNs"): HTTP/2 only (TLS, ALPN h2, no HTTP/1.1), ``POST
/3/device/<token>``, ES256 provider tokens checked against registered keys, topic and header
checks, a 4096-byte payload limit (5120 for VoIP), 200 with an ``apns-id`` header, and errors as
a status plus a JSON ``{"reason": ...}`` body (410 Unregistered adds a ``timestamp``).

A lean HTTP/2 server on asyncio (its own framing and HPACK decoder: the h2 package costs more per
request than the whole budget of a 10,000 notifications/s benchmark) runs in a background thread
with its own loop, with a certificate for 127.0.0.1 / localhost from a throwaway trustme CA whose
PEM is in a file (``ca_pem_path``) so worker subprocesses can trust it too. It advertises 1000
concurrent streams per connection, as Apple does (``max_streams`` to advertise fewer). Tests
script answers per device token (``script``, ``unregister``, ``fail``, ``bind``,
``reset_stream``: RST_STREAM after the request was read, instead of an answer) or for everything
(``fail_all``), slow every answer down (``delay``), and read back what arrived (``received``,
``deliveries``, ``jwts_seen``).

Loaded as a plugin from conftest.py. Fixtures: ``apns`` (session: the running server),
``apns_clean`` (the same server, reset for this test) and ``apns_key`` (a fresh provider key
registered with a reset server: any test that takes it starts clean).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import jwt
import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tasks.push.apns import hpack_codec
from tasks.push.apns.frames import (
    ACK,
    COMPRESSION_ERROR,
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    HEADERS,
    PADDED,
    PING,
    PREFACE,
    PROTOCOL_ERROR,
    PUSH_PROMISE,
    REFUSED_STREAM,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    ProtocolViolation,
    header_fragment,
    split_frames,
)
from tasks.push.apns.frames import frame as _frame
from workers.embedded_redis import free_port

# Apple's limits, with where they come from.
TOKEN_LIFETIME = 3600.0  # provider tokens older than an hour are ExpiredProviderToken
MAX_PAYLOAD = 4096  # bytes, every push type but VoIP ...
MAX_VOIP_PAYLOAD = 5120  # ... which gets 5 KB
MAX_COLLAPSE_ID = 64  # bytes
MAX_STREAMS = 1000  # SETTINGS_MAX_CONCURRENT_STREAMS Apple advertises on a provider connection
MAX_BODY_KEPT = 64 * 1024  # a larger body is answered 413 without being kept
PUSH_TYPES = frozenset({"alert", "background", "location", "voip", "complication", "fileprovider",
                        "mdm", "liveactivity", "pushtotalk", "widgets", "controls"})
# A provider key covers its apps' bundle ids and the topics Apple derives from them.
TOPIC_SUFFIXES = (".voip", ".complication", ".pushkit.fileprovider", ".push-type.liveactivity")
DEVICE_TOKEN = re.compile(r"[0-9a-fA-F]{64}")
APNS_ID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
DEFAULT_REASONS = {400: "BadDeviceToken", 403: "ExpiredProviderToken", 410: "Unregistered",
                   413: "PayloadTooLarge", 429: "TooManyRequests", 500: "InternalServerError",
                   503: "ServiceUnavailable"}


@dataclass
class Rule:
    """A scripted answer: ``times`` more requests (None: every one) get ``status``/``reason``,
    or with ``reset``, no answer but RST_STREAM with that code once the request was read."""

    status: int
    reason: str
    times: int | None = None
    retry_after: int | None = None
    timestamp: int | None = None  # ms since the epoch, for 410 Unregistered
    reset: int | None = None


class Answer(NamedTuple):
    status: int  # 0: no answer, ``reset`` says the RST_STREAM code
    headers: list[tuple[bytes, bytes]]
    body: bytes
    reset: int | None = None


@dataclass(frozen=True)
class Provider:
    team_id: str
    public_key: ec.EllipticCurvePublicKey
    topics: frozenset[str]


@dataclass(frozen=True)
class Request:
    """One request as the stand-in saw it, and what it answered."""

    token: str  # the device token from the path
    headers: dict[str, str]  # regular headers, lower-case names
    payload: Any  # the parsed JSON body, or None when it was not JSON
    size: int  # body bytes
    jwt: str | None  # the raw provider token from "authorization: bearer ..."
    kid: str | None  # from a verified token only
    iat: int | None
    status: int
    reason: str | None
    apns_id: str
    connection: int  # numbered per stand-in, from 1: tells streams on one connection apart
    at: float = field(default_factory=time.time)


class ApnsKey(NamedTuple):
    """A provider key as Apple hands it out: key id, team id, a topic, and the .p8 file."""

    key_id: str
    team_id: str
    topic: str
    p8_path: Path

    def sign(self, iat: int | None = None) -> str:
        """A provider token signed with this key (what the farm's adapter should produce)."""
        return provider_token(self.p8_path.read_bytes(), self.key_id, self.team_id, iat)


def provider_token(p8: bytes, key_id: str, team_id: str, iat: int | None = None) -> str:
    claims = {"iss": team_id, "iat": int(time.time()) if iat is None else iat}
    return jwt.encode(claims, p8, algorithm="ES256", headers={"kid": key_id})


def make_key(directory: Path, key_id: str | None = None, team_id: str | None = None,
             topic: str = "com.photofarm.app") -> tuple[ApnsKey, ec.EllipticCurvePublicKey]:
    """A new P-256 key pair; the private half written as PKCS#8 PEM ``AuthKey_<kid>.p8``."""
    key_id = key_id or uuid.uuid4().hex[:10].upper()
    team_id = team_id or uuid.uuid4().hex[:10].upper()
    private = ec.generate_private_key(ec.SECP256R1())
    path = directory / f"AuthKey_{key_id}.p8"
    path.write_bytes(private.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return ApnsKey(key_id, team_id, topic, path), private.public_key()


def _rule(status: int, reason: str | None, times: int | None, retry_after: int | None,
          timestamp: int | None) -> Rule:
    if reason is None and status not in DEFAULT_REASONS:
        raise ValueError(f"give the reason Apple would send with a {status}")
    if status == 410 and timestamp is None:
        timestamp = int(time.time() * 1000)
    return Rule(status, reason or DEFAULT_REASONS[status], times, retry_after, timestamp)


class Rejected(Exception):
    def __init__(self, status: int, reason: str, rule: Rule | None = None) -> None:
        super().__init__(status, reason)
        self.status, self.reason, self.rule = status, reason, rule


class ApnsStandin:
    """The stand-in server. ``start()`` / ``stop()`` (same port each time), ``endpoint``,
    ``ca_pem_path``; configuration and records are guarded by one lock, since the server's
    thread writes them while the test's thread reads them."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.endpoint = f"https://127.0.0.1:{self.port}"
        self.ca = trustme.CA()
        self.ca_pem_path = directory / "apns-ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_pem_path))
        self._ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._ssl.minimum_version = ssl.TLSVersion.TLSv1_2
        self._ssl.set_alpn_protocols(["h2"])
        self.ca.issue_cert("127.0.0.1", "localhost", "::1").configure_cert(self._ssl)
        self._lock = threading.Lock()
        self._providers: dict[str, Provider] = {}
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._connection_numbers = itertools.count(1)
        self.reset()

    def client_context(self) -> ssl.SSLContext:
        """What a client needs to trust the stand-in: ``httpx.Client(http2=True, verify=...)``."""
        return ssl.create_default_context(cafile=str(self.ca_pem_path))

    # -- configuration, from the test ---------------------------------------------------------

    def reset(self) -> None:
        """Forget records, scripts, providers and settings: as the session started it."""
        with self._lock:
            self.delay = 0.0  # seconds each request waits before it is judged and answered
            self.max_streams = MAX_STREAMS  # advertised to connections made from now on
            self.token_lifetime = TOKEN_LIFETIME
            self.min_token_interval: float | None = None  # see TooManyProviderTokenUpdates
            self._providers = {}
            self._verified: dict[str, tuple[str, int] | Rejected] = {}  # raw JWT -> (kid, iat)
            self._expired: set[str] = set()
            self._last_new_token: dict[str, float] = {}  # kid -> when its newest JWT was first seen
            self._rules: dict[str, list[Rule]] = {}
            self._topics: dict[str, str] = {}
            self._global: Rule | None = None
            self._requests: list[Request] = []
            self._jwts: dict[str, None] = {}  # ordered set
            self.connections_made = 0  # TLS connections that settled on h2
            self.goaways_received = 0  # clients that said GOAWAY rather than just hang up

    def register(self, key_id: str, team_id: str, public_key: ec.EllipticCurvePublicKey,
                 topics: set[str] | frozenset[str]) -> None:
        with self._lock:
            self._providers[key_id] = Provider(team_id, public_key, frozenset(topics))
            self._verified.clear()

    def add_key(self, directory: Path, **kwargs: Any) -> ApnsKey:
        """Make a provider key (see ``make_key``) and register it for its topic."""
        key, public = make_key(directory, **kwargs)
        self.register(key.key_id, key.team_id, public, {key.topic})
        return key

    def script(self, token: str, status: int, reason: str | None = None, *,
               times: int | None = None, retry_after: int | None = None,
               timestamp: int | None = None) -> None:
        """Answer the next ``times`` requests for ``token`` (None: all of them) with ``status``;
        scripts for one token queue up in order, and when they run out the token gets 200."""
        rule = _rule(status, reason, times, retry_after, timestamp)
        with self._lock:
            self._rules.setdefault(token, []).append(rule)

    def reset_stream(self, token: str, code: int = 2, *, times: int | None = 1) -> None:
        """The next ``times`` requests for ``token`` are read (and for all the client can tell,
        delivered), then reset with RST_STREAM ``code`` (INTERNAL_ERROR) instead of answered."""
        with self._lock:
            self._rules.setdefault(token, []).append(Rule(0, f"reset {code}", times, reset=code))

    def unregister(self, token: str, timestamp: int | None = None) -> None:
        """410 Unregistered from now on, with when the token stopped being valid (ms since the
        epoch; now by default)."""
        self.script(token, 410, timestamp=timestamp)

    def fail(self, token: str, times: int, status: int = 500,
             retry_after: int | None = None) -> None:
        """``times`` transient failures (429/500/503) for ``token``, then 200."""
        self.script(token, status, times=times, retry_after=retry_after)

    def bind(self, token: str, topic: str) -> None:
        """The device token belongs to ``topic``: any other topic is DeviceTokenNotForTopic."""
        with self._lock:
            self._topics[token] = topic

    def fail_all(self, status: int | None, reason: str | None = None, *,
                 times: int | None = None, retry_after: int | None = None) -> None:
        """Answer every request with ``status`` (before any other check); None switches it off."""
        rule = None if status is None else _rule(status, reason, times, retry_after, None)
        with self._lock:
            self._global = rule

    def expire_seen_tokens(self) -> None:
        """Every provider token seen so far is now ExpiredProviderToken, as if an hour passed;
        a freshly signed one is accepted."""
        with self._lock:
            self._expired.update(self._jwts)

    # -- records, for the test -----------------------------------------------------------------

    def received(self, token: str | None = None) -> list[Request]:
        """Every request (for ``token``), whatever it was answered."""
        with self._lock:
            return [r for r in self._requests if token is None or r.token == token]

    def deliveries(self, token: str | None = None) -> list[Request]:
        """The requests answered 200: the notifications Apple would deliver."""
        return [r for r in self.received(token) if r.status == 200]

    def jwts_seen(self) -> list[str]:
        """The distinct provider tokens presented, in the order first seen."""
        with self._lock:
            return list(self._jwts)

    # -- running --------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self) -> ApnsStandin:
        if self._thread is not None:
            return self
        ready = threading.Event()
        failure: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, args=(ready, failure),
                                        name="apns-standin", daemon=True)
        self._thread.start()
        if not ready.wait(10) or failure:
            self._thread.join(5)
            self._thread = None
            raise RuntimeError(f"APNs stand-in did not start on {self.endpoint}: {failure}")
        return self

    def stop(self) -> None:
        """Close the listener and drop every connection (clients see resets, then refusals)."""
        if self._thread is None:
            return
        assert self._loop is not None and self._stopping is not None
        self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(10)
        self._thread = None

    @contextlib.contextmanager
    def down(self) -> Iterator[None]:
        """``with apns.down(): ...``: stopped inside, started again on the same port after."""
        self.stop()
        try:
            yield
        finally:
            self.start()

    def _run(self, ready: threading.Event, failure: list[BaseException]) -> None:
        asyncio.run(self._serve(ready, failure))

    async def _serve(self, ready: threading.Event, failure: list[BaseException]) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        connections: set[_Connection] = set()
        try:
            server = await self._loop.create_server(
                lambda: _Connection(self, connections), "127.0.0.1", self.port, ssl=self._ssl,
                reuse_address=True, backlog=1024)
        except BaseException as exc:
            failure.append(exc)
            ready.set()
            return
        ready.set()
        await self._stopping.wait()
        server.close()
        for conn in list(connections):
            conn.abort()
        await server.wait_closed()

    # -- answering, on the server's thread ------------------------------------------------------

    def answer(self, method: str, path: str, headers: dict[str, str], duplicated: bool,
               body: bytes, connection: int) -> Answer:
        apns_id = headers.get("apns-id", "")
        if not APNS_ID.fullmatch(apns_id):
            apns_id = str(uuid.uuid4())
        token = path.removeprefix("/3/device/") if path.startswith("/3/device/") else ""
        raw = headers.get("authorization", "").removeprefix("bearer ").strip() or None
        payload: Any = None
        with contextlib.suppress(ValueError):
            payload = json.loads(body) if body else None
        with self._lock:
            try:
                if self._global is not None:
                    raise Rejected(self._global.status, self._global.reason,
                                   self._take(self._global))
                self._check(method, path, token, headers, duplicated, raw, body, payload)
                status, reason, rule = 200, None, None
            except Rejected as rejected:
                status, reason, rule = rejected.status, rejected.reason, rejected.rule
            if self._global is not None and self._global.times == 0:
                self._global = None
            kid = iat = None
            if raw is not None:
                self._jwts.setdefault(raw)
                verified = self._verified.get(raw)
                if isinstance(verified, tuple):  # a good signature, even if expired
                    kid, iat = verified
            self._requests.append(Request(token, headers, payload, len(body), raw, kid, iat,
                                          status, reason, apns_id, connection))
        out = [(b"apns-id", apns_id.encode())]
        if rule is not None and rule.reset is not None:
            return Answer(0, [], b"", rule.reset)
        if reason is None:
            return Answer(status, out, b"")
        error: dict[str, Any] = {"reason": reason}
        if rule is not None and rule.timestamp is not None:
            error["timestamp"] = rule.timestamp
        if rule is not None and rule.retry_after is not None:
            out.append((b"retry-after", str(rule.retry_after).encode()))
        out.append((b"content-type", b"application/json"))
        return Answer(status, out, json.dumps(error).encode())

    def _check(self, method: str, path: str, token: str, headers: dict[str, str],
               duplicated: bool, raw: str | None, body: bytes, payload: Any) -> None:
        """Apple's checks, in order: raises Rejected, or returns for a 200."""
        if method != "POST":
            raise Rejected(405, "MethodNotAllowed")
        if not path.startswith("/3/device/"):
            raise Rejected(404, "BadPath")
        if duplicated:
            raise Rejected(400, "DuplicateHeaders")
        if raw is None:
            raise Rejected(403, "MissingProviderToken")
        kid = self._verify(raw)
        topic = headers.get("apns-topic")
        if not topic:
            raise Rejected(400, "MissingTopic")
        topics = self._providers[kid].topics
        if topic not in topics and not any(topic.endswith(suffix) and
                                           topic.removesuffix(suffix) in topics
                                           for suffix in TOPIC_SUFFIXES):
            raise Rejected(400, "TopicDisallowed")
        push_type = headers.get("apns-push-type")
        if push_type not in PUSH_TYPES:
            raise Rejected(400, "InvalidPushType")
        if headers.get("apns-priority", "10") not in ("10", "5", "1"):
            raise Rejected(400, "BadPriority")
        if not headers.get("apns-expiration", "0").isdigit():
            raise Rejected(400, "BadExpirationDate")
        if "apns-id" in headers and not APNS_ID.fullmatch(headers["apns-id"]):
            raise Rejected(400, "BadMessageId")
        if len(headers.get("apns-collapse-id", "").encode()) > MAX_COLLAPSE_ID:
            raise Rejected(400, "BadCollapseId")
        if not token:
            raise Rejected(400, "MissingDeviceToken")
        if not DEVICE_TOKEN.fullmatch(token):
            raise Rejected(400, "BadDeviceToken")
        if self._topics.get(token, topic) != topic:
            raise Rejected(400, "DeviceTokenNotForTopic")
        if len(body) > (MAX_VOIP_PAYLOAD if push_type == "voip" else MAX_PAYLOAD):
            raise Rejected(413, "PayloadTooLarge")
        if not body:
            raise Rejected(400, "PayloadEmpty")
        if not isinstance(payload, dict):
            raise Rejected(400, "BadPayload")  # the stand-in's own name: Apple's table has none
        rules = self._rules.get(token)
        if rules:
            rule = rules[0]
            self._take(rule)
            if rule.times == 0:
                rules.pop(0)
            raise Rejected(rule.status, rule.reason, rule)

    def _take(self, rule: Rule) -> Rule:
        if rule.times is not None:
            rule.times -= 1
        return rule

    def _verify(self, raw: str) -> str:
        """The provider token's key id, or Rejected. Signatures are checked once per token."""
        verified = self._verified.get(raw)
        if verified is None:
            verified = self._verified[raw] = self._verify_signature(raw)
            if not isinstance(verified, Rejected) and self.min_token_interval is not None:
                kid, now = verified[0], time.monotonic()
                last = self._last_new_token.get(kid)
                if last is not None and now - last < self.min_token_interval:
                    del self._verified[raw]  # answered 429 now, judged afresh next time
                    raise Rejected(429, "TooManyProviderTokenUpdates")
                self._last_new_token[kid] = now
        if isinstance(verified, Rejected):
            raise verified
        kid, iat = verified
        if raw in self._expired or time.time() - iat > self.token_lifetime:
            raise Rejected(403, "ExpiredProviderToken")
        return kid

    def _verify_signature(self, raw: str) -> tuple[str, int] | Rejected:
        invalid = Rejected(403, "InvalidProviderToken")
        try:
            header = jwt.get_unverified_header(raw)
            provider = self._providers.get(header.get("kid", ""))
            if header.get("alg") != "ES256" or provider is None:
                return invalid
            claims = jwt.decode(raw, provider.public_key, algorithms=["ES256"],
                                issuer=provider.team_id, options={"require": ["iss", "iat"]})
        except jwt.PyJWTError:
            return invalid
        return header["kid"], int(claims["iat"])


# HTTP/2 (RFC 9113), just what a provider connection needs, on the farm's own frame constants
# (tasks/push/apns/frames.py). The h2 package's state machines cost ~0.2 ms a request, twice the
# whole budget at 10,000 requests/s.
MAX_FRAME = 16384  # SETTINGS_MAX_FRAME_SIZE, left at its default
STREAM_WINDOW = 1 << 20  # what each request stream may send before we replenish it
CONNECTION_WINDOW = 1 << 24
STATIC_STATUS = {200: 8, 204: 9, 206: 10, 304: 11, 400: 12, 404: 13, 500: 14}  # HPACK static table


def _response_block(status: int, headers: list[tuple[bytes, bytes]]) -> bytes:
    """Response headers, each a literal that is never added to the client's dynamic table."""
    index = STATIC_STATUS.get(status)
    string = hpack_codec.string
    block = [bytes((0x80 | index,)) if index else b"\x08" + string(str(status).encode())]
    block += [b"\x00" + string(name) + string(value) for name, value in headers]
    return b"".join(block)


class H2Error(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class HpackDecoder(hpack_codec.Decoder):
    """The farm's lean HPACK decoder (the hpack package's Decoder costs twice this whole server's
    budget), checked against the hpack package's own encoder in test_http2_conformance.py; here a
    bad block is a connection error, and values come out as UTF-8."""

    def decode(self, data: bytes) -> list[tuple[str, str]]:
        try:
            headers = super().decode(data)
        except hpack_codec.HpackError as exc:
            raise H2Error(COMPRESSION_ERROR) from exc
        return [(name, value if value.isascii() else
                 value.encode("latin-1").decode("utf-8", "surrogateescape"))
                for name, value in headers]


@dataclass
class _Stream:
    headers: list[tuple[str, str]]
    body: bytearray = field(default_factory=bytearray)


class _Connection(asyncio.Protocol):
    """One client connection. Requests are answered in the turn their last frame arrives, and a
    turn's frames go out in one write. Response bodies are a few dozen bytes, so only the
    connection's send window can hold them back (RFC 9113 6.9)."""

    def __init__(self, standin: ApnsStandin, registry: set[_Connection]) -> None:
        self.standin, self.registry = standin, registry
        self.number = next(standin._connection_numbers)
        self.transport: asyncio.Transport | None = None
        self.decoder = HpackDecoder()
        self.buffer = bytearray()
        self.preface = False
        self.streams: dict[int, _Stream] = {}
        self.last_stream = 0
        self.block: tuple[int, int, bytearray] | None = None  # a header block awaiting CONTINUATION
        self.send_window = 65535
        self.unacknowledged = 0  # DATA bytes received since our last connection WINDOW_UPDATE
        self.pending: dict[int, bytes] = {}  # response bodies waiting for send window
        self.out: list[bytes] = []
        self.max_streams = standin.max_streams  # what this connection was told

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        tls = transport.get_extra_info("ssl_object")
        if tls is None or tls.selected_alpn_protocol() != "h2":
            transport.abort()  # Apple speaks HTTP/2 only
            return
        self.registry.add(self)
        with self.standin._lock:
            self.standin.connections_made += 1
        settings = (b"\x00\x03" + self.max_streams.to_bytes(4, "big")  # MAX_CONCURRENT_STREAMS
                    + b"\x00\x04" + STREAM_WINDOW.to_bytes(4, "big"))  # INITIAL_WINDOW_SIZE
        grow = (CONNECTION_WINDOW - 65535).to_bytes(4, "big")  # from the default 64 KiB
        transport.write(_frame(SETTINGS, 0, 0, settings) + _frame(WINDOW_UPDATE, 0, 0, grow))

    def connection_lost(self, exc: Exception | None) -> None:
        self.registry.discard(self)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buffer += data
        if not self.preface:
            if len(self.buffer) < len(PREFACE):
                return
            if self.buffer[:len(PREFACE)] != PREFACE:
                self.transport.abort()
                return
            del self.buffer[:len(PREFACE)]
            self.preface = True
        try:
            try:
                frames, used = split_frames(self.buffer, MAX_FRAME)
            except ProtocolViolation as violation:
                raise H2Error(violation.code) from violation
            del self.buffer[:used]
            for kind, flags, stream_id, payload in frames:
                self._frame(kind, flags, stream_id, payload)
        except H2Error as error:
            self.out.append(_frame(GOAWAY, 0, 0, self.last_stream.to_bytes(4, "big")
                                   + error.code.to_bytes(4, "big")))
            self.transport.write(b"".join(self.out))
            self.transport.close()
            return
        if self.unacknowledged > CONNECTION_WINDOW // 2:
            self.out.append(_frame(WINDOW_UPDATE, 0, 0, self.unacknowledged.to_bytes(4, "big")))
            self.unacknowledged = 0
        if self.out:
            self.transport.write(b"".join(self.out))
            self.out.clear()

    def _frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self.block is not None and kind != CONTINUATION:
            raise H2Error(PROTOCOL_ERROR)
        if kind == HEADERS:
            self.block = (stream_id, flags, bytearray(header_fragment(flags, payload)))
            if flags & END_HEADERS:
                self._headers()
        elif kind == CONTINUATION:
            if self.block is None or self.block[0] != stream_id:
                raise H2Error(PROTOCOL_ERROR)
            self.block[2].extend(payload)
            if flags & END_HEADERS:
                self._headers()
        elif kind == DATA:
            self.unacknowledged += len(payload)
            if flags & PADDED:
                payload = payload[1:len(payload) - payload[0]]
            stream = self.streams.get(stream_id)
            if stream is not None:
                if len(stream.body) <= MAX_BODY_KEPT:
                    stream.body += payload
                if flags & END_STREAM:
                    self._respond(stream_id)
                elif payload:  # replenish the stream's window (no need once it has ended)
                    self.out.append(_frame(WINDOW_UPDATE, 0, stream_id,
                                           len(payload).to_bytes(4, "big")))
        elif kind == SETTINGS:
            if not flags & ACK:
                self.out.append(_frame(SETTINGS, ACK, 0))
        elif kind == PING:
            if not flags & ACK:
                self.out.append(_frame(PING, ACK, 0, payload))
        elif kind == WINDOW_UPDATE:
            if stream_id == 0:
                self.send_window += int.from_bytes(payload, "big") & 0x7FFFFFFF
                self._flush()
        elif kind == RST_STREAM:
            self.streams.pop(stream_id, None)
            self.pending.pop(stream_id, None)
        elif kind == GOAWAY:
            assert self.transport is not None
            with self.standin._lock:
                self.standin.goaways_received += 1
            self.transport.close()
        elif kind == PUSH_PROMISE:
            raise H2Error(PROTOCOL_ERROR)
        # PRIORITY and unknown frame types are ignored, as RFC 9113 says.

    def _headers(self) -> None:
        assert self.block is not None
        stream_id, flags, block = self.block
        self.block = None
        headers = self.decoder.decode(bytes(block))  # even when refused: keeps HPACK in step
        if stream_id in self.streams:  # trailers: nothing APNs uses
            if flags & END_STREAM:
                self._respond(stream_id)
            return
        if stream_id % 2 == 0 or stream_id <= self.last_stream:
            raise H2Error(PROTOCOL_ERROR)
        self.last_stream = stream_id
        if len(self.streams) >= self.max_streams:
            self.out.append(_frame(RST_STREAM, 0, stream_id, REFUSED_STREAM.to_bytes(4, "big")))
            return
        self.streams[stream_id] = _Stream(headers)
        if flags & END_STREAM:
            self._respond(stream_id)

    def _respond(self, stream_id: int) -> None:
        """Answer a request whose last frame arrived: now, or after the stand-in's ``delay``
        (the stream stays open, and counts against the limit, until then)."""
        delay = self.standin.delay
        if delay:
            asyncio.get_running_loop().call_later(delay, self._answer_late, stream_id)
        else:
            self._answer(stream_id)

    def _answer_late(self, stream_id: int) -> None:
        if self.transport is None or self.transport.is_closing():
            return  # the client went away before its request was judged: not delivered
        self._answer(stream_id)
        if self.out:
            self.transport.write(b"".join(self.out))
        self.out.clear()

    def _answer(self, stream_id: int) -> None:
        stream = self.streams.pop(stream_id, None)
        if stream is None:  # reset by the client meanwhile
            return
        headers: dict[str, str] = {}
        pseudo: dict[str, str] = {}
        duplicated = False
        for name, value in stream.headers:
            if name.startswith(":"):
                pseudo[name] = value
            else:
                duplicated = duplicated or name in headers
                headers[name] = value
        status, out, body, reset = self.standin.answer(
            pseudo.get(":method", ""), pseudo.get(":path", ""), headers, duplicated,
            bytes(stream.body), self.number)
        if reset is not None:
            self.out.append(_frame(RST_STREAM, 0, stream_id, reset.to_bytes(4, "big")))
            return
        self.out.append(_frame(HEADERS, END_HEADERS | (0 if body else END_STREAM), stream_id,
                               _response_block(status, out)))
        if body:
            self.pending[stream_id] = body
            self._flush()

    def _flush(self) -> None:
        for stream_id, body in list(self.pending.items()):
            if len(body) > self.send_window:
                return
            self.send_window -= len(body)
            self.out.append(_frame(DATA, END_STREAM, stream_id, body))
            del self.pending[stream_id]


@pytest.fixture(scope="session")
def apns(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApnsStandin]:
    """The session's APNs stand-in, running. Take ``apns_clean`` or ``apns_key`` for a reset one."""
    server = ApnsStandin(tmp_path_factory.mktemp("apns")).start()
    yield server
    server.stop()


@pytest.fixture
def apns_clean(apns: ApnsStandin) -> ApnsStandin:
    """The stand-in, running (restarted if a test left it down) and reset for this test."""
    apns.reset()
    return apns.start()


@pytest.fixture
def apns_key(apns_clean: ApnsStandin, tmp_path: Path) -> ApnsKey:
    """(key_id, team_id, topic, p8_path) of a fresh key registered with the reset stand-in."""
    return apns_clean.add_key(tmp_path)

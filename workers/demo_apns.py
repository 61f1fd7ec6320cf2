"""A local APNs stand-in for the demo (and the web tier's stand-ins page): the farm's real push
path, io worker to HTTP/2 over TLS, lands here instead of at Apple.

Small on purpose; the tests' full stand-in (tests/support/apns_standin.py: scripted failures,
slow answers, limits) needs dev dependencies. This one needs only the farm's own: ``cryptography``
makes a throwaway CA and a server certificate for 127.0.0.1 and an ES256 provider key (.p8) in a
private directory (0700, files 0600, removed at stop; the CA's private key never leaves memory,
the server's is removed once loaded), and the HTTP/2 side is workers/demo_http2.py, over the
farm's own framing (tasks/push/apns/frames.py). An asyncio loop in a daemon thread serves on a
free port::

    with ApnsStandIn(state / "apns") as apns:
        env = {**env, **apns.env()}             # FARM_APNS_APPS, FARM_APNS_CA_FILE
        DeviceRegistry(...).register(1, apns.bundle_id, device_token(1))
        ... apns.received() -> [Push(token, topic, payload, apns_id, status, reason, at)]

It answers as Apple does a good request (200 and an ``apns-id`` header) after checking the
provider token's ES256 signature, key id and team, the topic, the device token's form and the
payload's size; anything else gets Apple's status and ``{"reason": ...}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import ipaddress
import json
import os
import re
import secrets
import ssl
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from workers.demo_http2 import H2Connection

BUNDLE_ID = "com.photofarm.demo"  # the demo app's apns-topic
MAX_PAYLOAD = 4096  # bytes (Apple's limit for alerts)
KEPT = 1000  # pushes remembered, newest kept
DEVICE_TOKEN = re.compile(r"[0-9a-f]{64}")


def device_token(user_id: int) -> str:
    """The demo's device token for a user: 64 hex characters, the same every run."""
    return hashlib.sha256(f"photofarm demo device {user_id}".encode()).hexdigest()


@dataclass(frozen=True)
class Push:
    """One request as it arrived, and what it was answered."""

    token: str  # the device token from :path /3/device/<token>
    topic: str
    payload: Any  # the parsed JSON body (None when it was not JSON)
    apns_id: str
    status: int
    reason: str | None
    at: float

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def alert(self) -> str:
        aps = self.payload.get("aps") if isinstance(self.payload, dict) else None
        alert = aps.get("alert") if isinstance(aps, dict) else None
        if isinstance(alert, dict):
            alert = alert.get("body") or alert.get("title")
        return alert if isinstance(alert, str) else ""


def private_file(path: Path, data: bytes) -> Path:
    """``data`` in a file created 0600 (replacing any other)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    return path.resolve()


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _usage(**allowed: bool) -> x509.KeyUsage:
    names = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
             "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only")
    return x509.KeyUsage(**{name: allowed.get(name, False) for name in names})


def _certificates(ca_file: Path, chain: Path) -> ssl.SSLContext:
    """A throwaway CA (its certificate in ``ca.pem``) and a server certificate it signed for
    127.0.0.1 and localhost, loaded into a server context (the server's key file is then gone)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Photofarm demo APNs CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(_usage(key_cert_sign=True, crl_sign=True), critical=True)
          .add_extension(ca_ski, critical=False)
          .sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_usage(digital_signature=True), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                ca_ski), critical=False)
            .sign(ca_key, hashes.SHA256()))
    private_file(ca_file, ca.public_bytes(serialization.Encoding.PEM))
    private_file(chain, cert.public_bytes(serialization.Encoding.PEM) + _pem(key))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["h2"])  # Apple speaks HTTP/2 only
    try:
        context.load_cert_chain(chain)
    finally:
        chain.unlink()
    return context


class ApnsStandIn:
    """The stand-in. Records are read from any thread (the demo's, the web tier's)."""

    def __init__(self, directory: Path, bundle_id: str = BUNDLE_ID) -> None:
        self.directory = directory
        self.bundle_id = bundle_id
        self.key_id = secrets.token_hex(5).upper()  # Apple's shape: 10 upper-case hex here
        self.team_id = secrets.token_hex(5).upper()
        self.port = 0
        self.key_path = directory.resolve() / f"AuthKey_{self.key_id}.p8"
        self.ca_file = directory.resolve() / "ca.pem"
        self._key = ec.generate_private_key(ec.SECP256R1())  # written to key_path at start
        self._lock = threading.Lock()
        self._pushes: deque[Push] = deque(maxlen=KEPT)
        self._verified: dict[str, bool] = {}  # provider token -> good signature, key and team
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None

    @property
    def endpoint(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """What the farm needs to push here: the app (its .p8 by path) and the CA to trust."""
        return {"FARM_APNS_APPS": f"{self.bundle_id}|{self.key_id}|{self.team_id}|"
                                  f"{self.key_path}|{self.endpoint}",
                "FARM_APNS_CA_FILE": str(self.ca_file)}

    def received(self) -> list[Push]:
        """Every push received (the newest KEPT), oldest first, whatever it was answered."""
        with self._lock:
            return list(self._pushes)

    # -- running ---------------------------------------------------------------------------

    def start(self) -> ApnsStandIn:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.directory.chmod(0o700)
        private_file(self.key_path, _pem(self._key))
        context = _certificates(self.ca_file, self.directory / "server.pem")
        ready = threading.Event()
        failure: list[BaseException] = []
        self._thread = threading.Thread(target=lambda: asyncio.run(
            self._serve(context, ready, failure)), name="apns-standin", daemon=True)
        self._thread.start()
        if not ready.wait(10) or failure:
            self.stop()
            raise RuntimeError(f"the APNs stand-in did not start: {failure}")
        return self

    def stop(self) -> None:
        if self._thread is not None:
            if self._loop is not None and self._stopping is not None:
                self._loop.call_soon_threadsafe(self._stopping.set)
            self._thread.join(10)
            self._thread = None
        for path in (self.key_path, self.ca_file):  # throwaway: gone with the server
            path.unlink(missing_ok=True)

    def __enter__(self) -> ApnsStandIn:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    async def _serve(self, context: ssl.SSLContext, ready: threading.Event,
                     failure: list[BaseException]) -> None:
        self._loop, self._stopping = asyncio.get_running_loop(), asyncio.Event()
        connections: set[H2Connection] = set()
        try:
            server = await self._loop.create_server(lambda: H2Connection(self.answer, connections),
                                                    "127.0.0.1", 0, ssl=context)
            self.port = server.sockets[0].getsockname()[1]
        except BaseException as exc:
            failure.append(exc)
            return
        finally:
            ready.set()
        await self._stopping.wait()
        server.close()
        for conn in list(connections):
            if conn.transport is not None:
                conn.transport.abort()
        await server.wait_closed()

    # -- answering, on the server's thread --------------------------------------------------

    def answer(self, pseudo: dict[str, str], headers: dict[str, str],
               body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        apns_id = str(uuid.uuid4())  # unless the request named one
        with contextlib.suppress(ValueError):
            apns_id = str(uuid.UUID(headers.get("apns-id", "")))
        path = pseudo.get(":path", "")
        token = path.removeprefix("/3/device/")
        payload: Any = None
        with contextlib.suppress(ValueError):
            payload = json.loads(body)
        status, reason = self._judge(pseudo.get(":method", ""), path, token, headers, body)
        with self._lock:
            self._pushes.append(Push(token, headers.get("apns-topic", ""), payload, apns_id,
                                     status, reason, time.time()))
        if reason is None:
            return status, [("apns-id", apns_id)], b""
        return (status, [("apns-id", apns_id), ("content-type", "application/json")],
                json.dumps({"reason": reason}).encode())

    def _judge(self, method: str, path: str, token: str, headers: dict[str, str],
               body: bytes) -> tuple[int, str | None]:
        if method != "POST":
            return 405, "MethodNotAllowed"
        if not path.startswith("/3/device/"):
            return 404, "BadPath"
        if not self._authorized(headers.get("authorization", "")):
            return 403, "InvalidProviderToken"
        if headers.get("apns-topic") != self.bundle_id:
            return 400, "TopicDisallowed"
        if not DEVICE_TOKEN.fullmatch(token):
            return 400, "BadDeviceToken"
        if len(body) > MAX_PAYLOAD:
            return 413, "PayloadTooLarge"
        return (200, None) if body else (400, "PayloadEmpty")

    def _authorized(self, header: str) -> bool:
        raw = header.removeprefix("bearer ").strip()
        ok = self._verified.get(raw)
        if ok is None:
            try:
                ok = (jwt.get_unverified_header(raw).get("kid") == self.key_id
                      and bool(jwt.decode(raw, self._key.public_key(), algorithms=["ES256"],
                                          issuer=self.team_id,
                                          options={"require": ["iss", "iat"]})))
            except jwt.PyJWTError:
                ok = False
            if len(self._verified) > 100:  # a token lasts ~45 minutes: a handful per run
                self._verified.clear()
            self._verified[raw] = ok
        return ok

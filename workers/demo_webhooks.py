"""A local webhook receiver, for the demo, the benchmark's set-up and the integration tests: a
subscriber's endpoint as the Standard Webhooks scheme and Instagram's challenge expect it.
Long because the receiver's challenge, verification and record are one endpoint's behaviour.

One ``ThreadingHTTPServer`` (HTTP/1.1, keep-alive) on 127.0.0.1, a free port, in a daemon
thread::

    with WebhookReceiver() as hooks:
        sub, secret = subscriptions.add("user", 42, hooks.url("/a"))
        hooks.secrets["/a"] = secret            # or WebhookReceiver(secret=...) for every path
        ... hooks.wait_for(1) -> [Received(path, headers, body, verified, ...)]

- ``GET ...?hub.mode=subscribe&hub.challenge=X&hub.verify_token=T``: answers 200 with X as the
  body (the subscription handshake), recorded in :attr:`challenges`;
- ``POST``: the body's Standard Webhooks signature is checked with standardwebhooks'
  ``Webhook.verify`` against the secret for the path (``secrets[path]``, else ``secret``) and
  the request recorded (``verified`` says how that went); answers 200.

Knobs, each for the next ``n`` requests (to ``path`` only, if given), in the order set:
:meth:`fail_next` (an error status, optionally with Retry-After), :meth:`slow_next` (waits before
answering, or dribbles the answer's headers a byte at a time; the wait is on an event, so only
that request's thread waits and stopping the receiver ends it), :meth:`redirect_next` (a 3xx to
somewhere that must not be followed), :meth:`huge_next` (a large body), :meth:`wrong_challenge_next`
(the challenge answered with something else). :attr:`connections` counts TCP connections
accepted and :attr:`max_in_flight` the most requests answered at once.

Self-contained (the standard library and standardwebhooks).
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

HUGE_BODY = 1024 * 1024  # bytes in a huge_next answer unless told: well past the farm's 64 KiB cap
WRITE_CHUNK = 64 * 1024


@dataclass(frozen=True)
class Received:
    """One POST as it arrived."""

    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    verified: bool  # the signature checked out against the path's secret
    error: str  # why not, when it did not
    at: float

    @property
    def webhook_id(self) -> str:
        return self.headers.get("webhook-id", "")


@dataclass(frozen=True)
class Challenge:
    path: str
    challenge: str
    verify_token: str
    mode: str


@dataclass
class _Knob:
    kind: str  # fail | slow | redirect | huge | wrong_challenge
    left: int
    path: str | None
    status: int = 200
    seconds: float = 0.0
    dribble: bool = False
    location: str = ""
    size: int = 0
    chunked: bool = False
    retry_after: str | None = None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    receiver: WebhookReceiver

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.receiver._lock:
            self.receiver.connections += 1
        super().process_request(request, client_address)


class WebhookReceiver:
    """A subscriber's endpoint. State is safe to read from any thread (the test's)."""

    def __init__(self, secret: str | None = None, *, tls: ssl.SSLContext | None = None,
                 answer: bytes = b"ok") -> None:
        self.secret = secret  # for every path without its own entry in ``secrets``
        self.secrets: dict[str, str] = {}
        self.tls = tls
        self.answer = answer
        self.connections = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._received: list[Received] = []
        self._challenges: list[Challenge] = []
        self._requests: list[tuple[str, str]] = []  # (method, path) of every request
        self._knobs: list[_Knob] = []
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- running ---------------------------------------------------------------------------------

    def start(self) -> WebhookReceiver:
        server = _Server(("127.0.0.1", 0), _Handler, bind_and_activate=False)
        server.receiver = self
        server.server_bind()
        server.server_activate()
        if self.tls is not None:
            server.socket = self.tls.wrap_socket(server.socket, server_side=True,
                                                 do_handshake_on_connect=False)
        self._server = server
        self._stopping.clear()
        self._thread = threading.Thread(target=server.serve_forever, name="webhook-receiver",
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # releases slow answers at once
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the receiver is not running")
        return int(self._server.server_address[1])

    def url(self, path: str = "/hook", host: str = "127.0.0.1") -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://{host}:{self.port}{path}"

    # -- knobs -----------------------------------------------------------------------------------

    def _knob(self, knob: _Knob) -> None:
        with self._lock:
            self._knobs.append(knob)

    def fail_next(self, n: int = 1, status: int = 500, *, path: str | None = None,
                  retry_after: str | None = None) -> None:
        self._knob(_Knob("fail", n, path, status=status, retry_after=retry_after))

    def slow_next(self, n: int = 1, seconds: float = 10.0, *, path: str | None = None,
                  dribble: bool = False) -> None:
        """Answer only after ``seconds``; with ``dribble``, send the status line at once and
        then the headers a byte at a time over ``seconds`` (each byte well inside any per-read
        timeout: only an overall deadline stops it)."""
        self._knob(_Knob("slow", n, path, seconds=seconds, dribble=dribble))

    def redirect_next(self, n: int = 1, location: str = "http://169.254.169.254/latest/meta-data/",
                      *, status: int = 302, path: str | None = None) -> None:
        self._knob(_Knob("redirect", n, path, status=status, location=location))

    def huge_next(self, n: int = 1, size: int = HUGE_BODY, *, path: str | None = None,
                  chunked: bool = False) -> None:
        self._knob(_Knob("huge", n, path, size=size, chunked=chunked))

    def wrong_challenge_next(self, n: int = 1, *, path: str | None = None) -> None:
        self._knob(_Knob("wrong_challenge", n, path))

    def reset(self) -> None:
        """Forget what arrived and every knob (the secrets stay)."""
        with self._lock:
            self._received.clear()
            self._challenges.clear()
            self._requests.clear()
            self._knobs.clear()
            self.connections = self.max_in_flight = 0

    # -- what arrived ----------------------------------------------------------------------------

    def received(self, path: str | None = None) -> list[Received]:
        with self._lock:
            return [r for r in self._received if path is None or r.path == path]

    @property
    def challenges(self) -> list[Challenge]:
        with self._lock:
            return list(self._challenges)

    @property
    def requests(self) -> list[tuple[str, str]]:
        """(method, path) of every request that arrived, whatever it was."""
        with self._lock:
            return list(self._requests)

    def wait_for(self, count: int, *, path: str | None = None,
                 timeout: float = 10.0) -> list[Received]:
        """At least ``count`` POSTs (to ``path``) have arrived: them; AssertionError if they do
        not within ``timeout``."""
        def enough() -> bool:
            return sum(1 for r in self._received if path is None or r.path == path) >= count

        with self._arrived:
            if not self._arrived.wait_for(enough, timeout):
                got = sum(1 for r in self._received if path is None or r.path == path)
                raise AssertionError(f"receiver: {got} of {count} deliveries arrived within "
                                     f"{timeout}s")
        return self.received(path)

    # -- the handler's side ----------------------------------------------------------------------

    def _take_knob(self, path: str, challenge: bool) -> _Knob | None:
        with self._lock:
            for knob in self._knobs:
                if knob.left <= 0 or (knob.path is not None and knob.path != path):
                    continue
                if knob.kind == "wrong_challenge" and not challenge:
                    continue  # only ever answers a challenge
                knob.left -= 1
                return knob
            return None

    def _verify(self, path: str, headers: dict[str, str], body: bytes) -> tuple[bool, str]:
        secret = self.secrets.get(path, self.secret)
        if not secret:
            return False, "no secret for this path"
        try:
            Webhook(secret).verify(body, headers, json_parse=False)
        except (WebhookVerificationError, ValueError) as exc:
            return False, str(exc) or type(exc).__name__
        return True, ""

    def _record(self, item: Received | Challenge) -> None:
        with self._arrived:
            if isinstance(item, Received):
                self._received.append(item)
            else:
                self._challenges.append(item)
            self._arrived.notify_all()

    def _enter(self, method: str, path: str) -> None:
        with self._lock:
            self._requests.append((method, path))
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "WebhookReceiver/1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        if isinstance(self.connection, ssl.SSLSocket):
            self.connection.settimeout(10)
            try:
                self.connection.do_handshake()
            except (OSError, ssl.SSLError):
                self.close_connection = True
                raise

    def do_GET(self) -> None:
        self._answer(self._challenge)

    def do_POST(self) -> None:
        self._answer(self._post)

    def _answer(self, handle: Callable[[WebhookReceiver, str], None]) -> None:
        receiver = self.server.receiver
        path = urlsplit(self.path).path
        receiver._enter(self.command, path)
        try:
            handle(receiver, path)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            self.close_connection = True  # the client gave up (a timeout, a size cap)
        finally:
            receiver._leave()

    def _challenge(self, receiver: WebhookReceiver, path: str) -> None:
        query = parse_qs(urlsplit(self.path).query)

        def one(name: str) -> str:
            return (query.get(name) or [""])[0]

        receiver._record(Challenge(path, one("hub.challenge"), one("hub.verify_token"),
                                   one("hub.mode")))
        knob = receiver._take_knob(path, challenge=True)
        body = one("hub.challenge").encode()
        if knob is not None and knob.kind == "wrong_challenge":
            body = b"not-the-challenge"
        elif knob is not None and self._knob_answered(receiver, knob):
            return
        if one("hub.mode") != "subscribe" or not body:
            self._send(400, b"expected hub.mode=subscribe and hub.challenge")
            return
        self._send(200, body, content_type="text/plain")

    def _post(self, receiver: WebhookReceiver, path: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        verified, error = receiver._verify(path, headers, body)
        receiver._record(Received(path, headers, body, verified, error, time.time()))
        knob = receiver._take_knob(path, challenge=False)
        if knob is not None and self._knob_answered(receiver, knob):
            return
        self._send(200, receiver.answer)

    def _knob_answered(self, receiver: WebhookReceiver, knob: _Knob) -> bool:
        """Apply a knob; True when it has answered (or dropped) the request itself."""
        if knob.kind == "slow":
            if knob.dribble:
                self._dribble(receiver, knob.seconds)
                return True
            receiver._stopping.wait(knob.seconds)
            return False  # then the usual answer, late
        if knob.kind == "fail":
            extra = {"Retry-After": knob.retry_after} if knob.retry_after else {}
            self._send(knob.status, b"failing on purpose", headers=extra)
            return True
        if knob.kind == "redirect":
            self._send(knob.status, b"", headers={"Location": knob.location})
            return True
        if knob.kind == "huge":
            self._huge(knob.size, knob.chunked)
            return True
        return False

    def _send(self, status: int, body: bytes, *, content_type: str = "text/plain",
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _dribble(self, receiver: WebhookReceiver, seconds: float) -> None:
        head = b"X-Dribble: " + b"." * 38 + b"\r\nContent-Length: 2\r\n\r\nok"
        step = seconds / len(head)
        self.wfile.write(b"HTTP/1.1 200 OK\r\n")
        self.wfile.flush()
        for i in range(len(head)):
            if receiver._stopping.wait(step):
                break
            self.wfile.write(head[i:i + 1])
            self.wfile.flush()
        self.close_connection = True

    def _huge(self, size: int, chunked: bool) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(size))
        self.end_headers()
        block = b"x" * WRITE_CHUNK
        left = size
        while left > 0:
            piece = block[:min(left, WRITE_CHUNK)]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
            left -= len(piece)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the tests and the demo read the state, not a log

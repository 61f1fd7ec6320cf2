"""The one small HTTP adapter to APNs: HTTP/2 over TLS, many streams on one connection.
Long because it is one adapter: the loop thread, connections, resend rules and results together.

Celery's io workers call this from many threads, synchronously. Each process runs ONE asyncio
event loop in a daemon thread holding one HTTP/2 connection per endpoint (``http2``, our own lean
client: httpx cost ~2.5 ms of CPU per push here, 25x the budget of 10,000 pushes/s); a call hands
its whole batch to that loop, so every thread's requests share that connection as concurrent
streams, up to the server's limit (Apple: 1000). The loop and its connections are made lazily in
the process that uses them (pid-checked, and forgotten in a forked child), never inherited from a
prefork parent.

Answers come back as they arrive (``as_completed``: batches of (index, result), handed from the
loop's thread to the caller's through a queue), so a caller can record each 200 at once rather
than after the batch; ``send_many`` collects them in order.

What is sent again, and what never is: a request the server guarantees it did not process
(REFUSED_STREAM, past a GOAWAY's last stream id, never written) is resent here, up to
RESEND_ATTEMPTS tries within one timeout of its first refusal. A request that left without an
answer (a late stream, cancelled; another RST_STREAM code; the connection lost) has an unknown
outcome (``PushResult.unknown``): APNs may have delivered it, so it is never resent here; the
caller decides (push/send.py). When the server is unreachable or silent, the call's requests not
yet started are not sent (status 0, not unknown): in an outage a batch comes back in about one
timeout.

No reason handling here: every device gets a PushResult, and the push task decides (delete the
token, retry, re-sign, fail). Transport failures are results too (status 0), never exceptions.

Over 300 lines because its three parts share one private state: the calls the farm makes, the
process's loop and connections (``_Process``), and one call's life on that loop (``_Call``).
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, cast
from urllib.parse import urlsplit

from config.settings import get_settings
from tasks.core.backoff import parse_retry_after
from tasks.core.errors import TransientError
from tasks.core.process_local import ProcessLocal
from tasks.push.apns.apps import App
from tasks.push.apns.frames import Outcome, Response
from tasks.push.apns.hpack_codec import indexed, literal
from tasks.push.apns.http2 import Http2Connection
from tasks.push.apns.token import get_token

# Streams in flight per connection, at most: Apple advertises 1000, and the server's own
# SETTINGS lower it further when they say so. Requests beyond it wait, in order, for a stream.
MAX_IN_FLIGHT = 1000
# Recycle a connection idle this long rather than discover on the next push that a middlebox or
# Apple dropped it; a busy worker never goes idle.
KEEPALIVE = 300.0
# A request the server guarantees it did not process is sent again, at most this many tries in
# all and only within one timeout of its first refusal, RESEND_DELAY apart, doubling (a server
# refusing streams is at its limit; one going away needs a moment to be replaced).
RESEND_ATTEMPTS = 5
RESEND_DELAY = 0.025
# Between two batches of answers the caller waits at most this many timeouts (+5 s): every
# request ends within about one (a stream's own, a silent connection's, a connect's, the resends'),
# so longer means the loop itself is wedged.
WEDGED_AFTER = 3

# Some push types go to a derived topic (Apple, "Sending notification requests to APNs").
TOPIC_SUFFIX = {
    "voip": ".voip",
    "complication": ".complication",
    "fileprovider": ".pushkit.fileprovider",
    "liveactivity": ".push-type.liveactivity",
    "location": ".location-query",
    "pushtotalk": ".voip-ptt",
}
_HEX = re.compile(r"[0-9A-Fa-f]+")
# What a failed connect raises: reported per device as status 0, never raised.
CONNECT_ERRORS = (OSError, ssl.SSLError, ConnectionError)


@dataclass(frozen=True)
class PushRequest:
    device_token: str  # hex
    payload: bytes  # the JSON aps payload, already encoded (4 KB limit, 5 KB for VoIP)
    push_type: str = "alert"  # apns-push-type: alert, background, voip, liveactivity, ...
    priority: int | None = None  # apns-priority: 10 now, 5 power-considerate, 1 low; None: 10
    expiration: int | None = None  # apns-expiration: unix seconds; 0 = now or never
    collapse_id: str | None = None  # apns-collapse-id (<= 64 bytes)
    apns_id: str | None = None  # apns-id, a UUID; None: Apple assigns one


@dataclass(frozen=True)
class PushResult:
    device_token: str
    status: int  # HTTP status from APNs; 0: no answer (transport error, timeout, not sent)
    reason: str | None = None  # Apple's reason string, e.g. "Unregistered", "BadDeviceToken"
    timestamp: int | None = None  # 410 only: ms since epoch the token stopped being valid
    apns_id: str | None = None
    retry_after: float | None = None  # seconds, when the server asked for a pause
    error: str | None = None  # transport error text when status is 0
    # Status 0 only: the request left but no answer came (a late stream, a reset other than
    # REFUSED_STREAM, the connection lost), so APNs may have delivered it. Never resent blindly.
    # False with status 0: certainly not delivered (not sent, refused, past GOAWAY).
    unknown: bool = False

    @property
    def ok(self) -> bool:
        return self.status == 200


class Completed(NamedTuple):
    """Answers as they arrived: (index in the call's requests, result) pairs, and ``arrived``,
    the time.monotonic() at which the first of them was complete on the loop's thread."""

    arrived: float
    results: list[tuple[int, PushResult]]


def as_completed(app: App, requests: Sequence[PushRequest], *, token: str | None = None,
                 timeout: float | None = None) -> Iterator[Completed]:
    """Send every request concurrently over this process's connection; yield their results in
    batches as they arrive (whatever arrived while the caller was busy comes as one batch), until
    every request has one.

    ``token`` is the provider token to use (default: the farm-wide one); a caller handling
    ExpiredProviderToken passes the token it got back from ``token.resign``. ``timeout`` bounds
    each request from when it gets a stream (waiting for a free one does not count). Requests
    the server did not process are resent, bounded (RESEND_ATTEMPTS); a result with ``unknown``
    set was sent and may have been delivered, and is not resent. TransientError if the loop
    stops answering altogether.
    """
    if not requests:
        return
    token = token or get_token(app)
    timeout = timeout or get_settings().apns_timeout
    proc = _process()
    answers: queue.SimpleQueue[Completed] = queue.SimpleQueue()
    proc.loop.call_soon_threadsafe(_Call(proc, app, token, requests, timeout, answers.put).start)
    left, patience = len(requests), WEDGED_AFTER * timeout + 5
    while left:
        try:
            first = answers.get(timeout=patience)
        except queue.Empty:
            raise TransientError("APNs event loop did not answer in time") from None
        results = first.results
        while True:  # everything else already there, as one batch
            try:
                results += answers.get_nowait().results
            except queue.Empty:
                break
        left -= len(results)
        yield Completed(first.arrived, results)


def send_many(app: App, requests: Sequence[PushRequest], *, token: str | None = None,
              timeout: float | None = None) -> list[PushResult]:
    """``as_completed``, collected: one result per request, in order."""
    results: list[PushResult | None] = [None] * len(requests)
    for batch in as_completed(app, requests, token=token, timeout=timeout):
        for i, result in batch.results:
            results[i] = result
    return cast(list[PushResult], results)


def send(app: App, request: PushRequest, **kw: Any) -> PushResult:
    return send_many(app, [request], **kw)[0]


def topic(app: App, push_type: str) -> str:
    return app.app_id + TOPIC_SUFFIX.get(push_type, "")


class _Blocks:
    """Request header blocks (HPACK), built from parts encoded once: the pseudo-headers per
    endpoint, the provider token, topic and push type per combination; only the path and the
    optional headers are encoded per request."""

    def __init__(self) -> None:
        self.parts: dict[tuple[str, str, str, str], tuple[bytes, bytes]] = {}

    def __call__(self, app: App, token: str, req: PushRequest) -> bytes:
        key = (app.endpoint, app.app_id, token, req.push_type)
        parts = self.parts.get(key)
        if parts is None:
            if len(self.parts) >= 256:  # tokens change hourly; never grow without bound
                self.parts.clear()
            pseudo = (indexed(":method", "POST") + indexed(":scheme", "https")
                      + literal(":authority", urlsplit(app.endpoint).netloc))
            regular = (literal("authorization", f"bearer {token}", sensitive=True)
                       + literal("apns-topic", topic(app, req.push_type))
                       + literal("apns-push-type", req.push_type))
            parts = self.parts[key] = (pseudo, regular)
        block = [parts[0], literal(":path", f"/3/device/{req.device_token}"), parts[1],
                 literal("content-length", str(len(req.payload)))]
        if req.priority is not None:
            block.append(literal("apns-priority", str(req.priority)))
        if req.expiration is not None:
            block.append(literal("apns-expiration", str(req.expiration)))
        if req.collapse_id:
            block.append(literal("apns-collapse-id", req.collapse_id))
        if req.apns_id:
            block.append(literal("apns-id", req.apns_id))
        return b"".join(block)


class _Process:
    """This process's event-loop thread and its connections (one per endpoint and CA)."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self.connections: dict[tuple[str, Path | None], Http2Connection] = {}
        self.opening: dict[tuple[str, Path | None], asyncio.Task[Http2Connection]] = {}
        self.contexts: dict[Path | None, ssl.SSLContext] = {}
        self.blocks = _Blocks()
        self.thread = threading.Thread(target=self.loop.run_forever, name="apns-loop",
                                       daemon=True)
        self.thread.start()

    def context(self, ca_file: Path | None) -> ssl.SSLContext:
        ctx = self.contexts.get(ca_file)
        if ctx is None:
            ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
            ctx.set_alpn_protocols(["h2"])  # APNs speaks HTTP/2 only
            self.contexts[ca_file] = ctx
        return ctx

    def ready(self, app: App) -> Http2Connection | None:
        """The endpoint's live connection, if there is one."""
        conn = self.connections.get((app.endpoint, app.ca_file))
        return conn if conn is not None and conn.usable(KEEPALIVE) else None

    async def connection(self, app: App, timeout: float) -> Http2Connection:
        """The endpoint's live connection, or a new one; callers arriving while it is being
        opened share that one attempt (and its failure) rather than each dial in turn."""
        conn = self.ready(app)
        if conn is not None:
            return conn
        key = (app.endpoint, app.ca_file)
        opening = self.opening.get(key)
        if opening is None:
            opening = self.opening[key] = self.loop.create_task(self.open(app, timeout))
            opening.add_done_callback(lambda _: self.opening.pop(key, None))
        return await asyncio.shield(opening)

    async def open(self, app: App, timeout: float) -> Http2Connection:
        url = urlsplit(app.endpoint)
        conn = await Http2Connection.open(url.hostname or "", url.port or 443,
                                          self.context(app.ca_file), timeout, MAX_IN_FLIGHT)
        self.connections[(app.endpoint, app.ca_file)] = conn
        return conn

    def close(self, timeout: float = 5.0) -> None:
        async def close_all() -> None:
            for conn in self.connections.values():
                conn.close("client closed")
            self.connections.clear()

        try:
            asyncio.run_coroutine_threadsafe(close_all(), self.loop).result(timeout)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout)
            if not self.thread.is_alive():
                self.loop.close()


class _Call:
    """One call's requests, on the loop: sent, resent while the server guarantees it did not
    process them, and every outcome handed to the caller (``deliver``) as it arrives, batched
    per turn of the loop."""

    def __init__(self, proc: _Process, app: App, token: str, requests: Sequence[PushRequest],
                 timeout: float, deliver: Callable[[Completed], None]) -> None:
        self.proc, self.app, self.token, self.requests = proc, app, token, requests
        self.timeout, self.deliver, self.loop = timeout, deliver, proc.loop
        self.pending: list[tuple[int, PushResult]] = []
        self.arrived = 0.0
        self.tries: dict[int, tuple[int, float]] = {}  # resent: (tries so far, first refused at)
        self.again: list[int] = []  # to resend at the next resend turn
        self.resending: asyncio.TimerHandle | None = None
        self.opening: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        todo = []
        for i, req in enumerate(self.requests):
            if _HEX.fullmatch(req.device_token):
                todo.append(i)
            else:  # would not even make a valid path; Apple's own answer, without the trip
                self.report(i, PushResult(req.device_token, 400, "BadDeviceToken",
                                          error="not hex, not sent"))
        if todo:
            self.send(todo)

    def send(self, todo: list[int]) -> None:
        conn = self.proc.ready(self.app)
        if conn is not None:
            self.send_on(conn, todo)
        else:
            task = self.loop.create_task(self.connect_and_send(todo))
            self.opening.add(task)
            task.add_done_callback(self.opening.discard)

    async def connect_and_send(self, todo: list[int]) -> None:
        try:
            conn = await self.proc.connection(self.app, self.timeout)
        except TimeoutError:
            self.unsent(todo, f"timeout: no answer in {self.timeout:g}s")
        except CONNECT_ERRORS as exc:
            self.unsent(todo, f"ConnectError: {exc}")
        else:
            self.send_on(conn, todo)

    def send_on(self, conn: Http2Connection, todo: list[int]) -> None:
        app, token, blocks, requests = self.app, self.token, self.proc.blocks, self.requests
        for i in todo:
            req = requests[i]
            conn.send(blocks(app, token, req), req.payload, self.timeout, self.done, i)
        conn.flush()

    def done(self, i: int, outcome: Outcome) -> None:
        """A request's outcome, from the connection (synchronously: never send from here)."""
        req = self.requests[i]
        if isinstance(outcome, Response):
            self.report(i, _result(req, outcome))
        elif not (outcome.unprocessed and not outcome.timeout and self.resend(i)):
            error, tries = outcome.error, self.tries.get(i, (1, 0.0))[0]
            if tries > 1:
                error += (f" (sent {tries} times, every one refused unprocessed)"
                          if outcome.unprocessed else
                          f" (try {tries}: the ones before were refused unprocessed)")
            self.report(i, PushResult(req.device_token, 0, error=error,
                                      unknown=not outcome.unprocessed))

    def resend(self, i: int) -> bool:
        """Send a request the server did not process again, if within the bounds."""
        now = self.loop.time()
        tries, first = self.tries.get(i, (1, now))
        delay = RESEND_DELAY * 2 ** (tries - 1)
        if tries >= RESEND_ATTEMPTS or now + delay - first > self.timeout:
            return False
        self.tries[i] = (tries + 1, first)
        self.again.append(i)
        if self.resending is None:
            self.resending = self.loop.call_later(delay, self.resend_now)
        return True

    def resend_now(self) -> None:
        self.resending = None
        todo, self.again = self.again, []
        self.send(todo)

    def unsent(self, todo: list[int], error: str) -> None:
        """No connection: the first request carries the reason, the rest were not sent into it."""
        for n, i in enumerate(todo):
            self.report(i, PushResult(self.requests[i].device_token, 0,
                                      error=error if n == 0 else f"not sent: {error}"))

    def report(self, i: int, result: PushResult) -> None:
        if not self.pending:
            self.arrived = time.monotonic()
            self.loop.call_soon(self.flush)
        self.pending.append((i, result))

    def flush(self) -> None:
        batch, self.pending = self.pending, []
        self.deliver(Completed(self.arrived, batch))


def _result(req: PushRequest, resp: Response) -> PushResult:
    reason = timestamp = None
    if resp.status != 200 and resp.body:
        try:
            body = json.loads(resp.body)
            reason, timestamp = body.get("reason"), int(body.get("timestamp") or 0) or None
        except (ValueError, AttributeError, TypeError):
            # Not Apple's JSON (a proxy's page?): keep a hint.
            reason = resp.body[:200].decode("utf-8", "replace")
    return PushResult(req.device_token, resp.status, reason, timestamp,
                      resp.headers.get("apns-id"),
                      parse_retry_after(resp.headers.get("retry-after")))


# This process's adapter. A forked child finds none and starts afresh on first use: the parent's
# loop thread does not exist there and its sockets are the parent's, so they are never closed
# from the child (that would send GOAWAY on the parent's connection).
_procs: ProcessLocal[str, _Process] = ProcessLocal("apns adapter")


def _process() -> _Process:
    return _procs.get("adapter", _Process)


def close() -> None:
    """Close this process's connections and stop its loop (worker shutdown)."""
    proc = _procs.pop("adapter")
    if proc is not None:
        proc.close()


def process_info() -> tuple[int, int, int] | None:
    """(pid, loop thread ident, id of the loop) of this process's adapter, or None (tests)."""
    proc = _procs.peek("adapter")
    if proc is None:
        return None
    return proc.pid, proc.thread.ident or 0, id(proc.loop)

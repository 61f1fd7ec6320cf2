"""The one small HTTP adapter to APNs: HTTP/2 over TLS, many streams on one connection.

Celery's io workers call this from many threads, synchronously. Each process runs ONE asyncio
event loop in a daemon thread holding one HTTP/2 connection per endpoint (``http2``, our own lean
client: httpx cost ~2.5 ms of CPU per push here, 25x the budget of 10,000 pushes/s); callers
submit whole batches with run_coroutine_threadsafe, so every thread's requests share that
connection as concurrent streams, up to the server's limit (Apple: 1000). The loop and its
connections are made lazily in the process that uses them (pid-checked, and forgotten in a forked
child), never inherited from a prefork parent.

No reason handling here: every device gets a PushResult, and the push task decides (delete the
token, retry, re-sign, fail). Transport failures are results too (status 0), never exceptions.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import re
import ssl
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from config.settings import get_settings
from tasks.core.backoff import parse_retry_after
from tasks.core.errors import TransientError
from tasks.core.process_local import ProcessLocal
from tasks.push.apns.apps import App
from tasks.push.apns.frames import Response
from tasks.push.apns.hpack_codec import indexed, literal
from tasks.push.apns.http2 import Http2Connection
from tasks.push.apns.token import get_token

# Streams in flight per connection, at most: Apple advertises 1000, and the server's own
# SETTINGS lower it further when they say so. Requests beyond it wait, in order, for a stream.
MAX_IN_FLIGHT = 1000
# Recycle a connection idle this long rather than discover on the next push that a middlebox or
# Apple dropped it; a busy worker never goes idle.
KEEPALIVE = 300.0

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

    @property
    def ok(self) -> bool:
        return self.status == 200


def send_many(app: App, requests: Sequence[PushRequest], *, token: str | None = None,
              timeout: float | None = None) -> list[PushResult]:
    """Send every request concurrently over this process's connection; one result each, in order.

    ``token`` is the provider token to use (default: the farm-wide one); a caller handling
    ExpiredProviderToken passes the token it got back from ``token.resign``. ``timeout`` bounds
    each request from when it gets a stream. A stream whose connection died is tried once more
    on a new one. Once one request of the call finds APNs unreachable or silent, the call's
    requests not yet started are not sent (status 0): in an outage a big batch comes back in
    about one timeout, not one per hundred devices.
    """
    if not requests:
        return []
    token = token or get_token(app)
    timeout = timeout or get_settings().apns_timeout
    proc = _process()
    future = asyncio.run_coroutine_threadsafe(proc.send_all(app, token, requests, timeout),
                                              proc.loop)
    try:
        # Every request has its own timeout; this wait only guards against a wedged loop.
        return future.result((timeout + 1) * (2 + len(requests) / MAX_IN_FLIGHT))
    except concurrent.futures.TimeoutError:
        future.cancel()
        raise TransientError("APNs event loop did not answer in time") from None


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

    async def connection(self, app: App, timeout: float) -> Http2Connection:
        """The endpoint's live connection, or a new one; callers arriving while it is being
        opened share that one attempt (and its failure) rather than each dial in turn."""
        key = (app.endpoint, app.ca_file)
        conn = self.connections.get(key)
        if conn is not None and conn.usable(KEEPALIVE):
            return conn
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

    async def send_all(self, app: App, token: str, requests: Sequence[PushRequest],
                       timeout: float) -> list[PushResult]:
        results: list[PushResult | None] = [None] * len(requests)
        todo: list[int] = []
        for i, req in enumerate(requests):
            if _HEX.fullmatch(req.device_token):
                todo.append(i)
            else:  # would not even make a valid path; Apple's own answer, without the trip
                results[i] = PushResult(req.device_token, 400, "BadDeviceToken",
                                        error="not hex, not sent")
        for attempt in (1, 2):
            if not todo:
                break
            try:
                conn = await self.connection(app, timeout)
            except TimeoutError:
                _unsent(results, requests, todo, f"timeout: no answer in {timeout:g}s")
                break
            except CONNECT_ERRORS as exc:
                _unsent(results, requests, todo, f"ConnectError: {exc}")
                break
            futures = [conn.submit(self.blocks(app, token, requests[i]), requests[i].payload,
                                   timeout) for i in todo]
            conn.flush()
            retry = []
            for i, outcome in zip(todo, await asyncio.gather(*futures), strict=True):
                req = requests[i]
                if isinstance(outcome, Response):
                    results[i] = _result(req, outcome)
                elif attempt == 1 and not outcome.timeout:
                    # The connection died under the stream (most often while idle: Apple's
                    # GOAWAY or a NAT's timeout go unnoticed until the next write), or the server
                    # refused it unprocessed: once more, on a new connection. A caller's retry
                    # would resend it just the same.
                    retry.append(i)
                else:
                    results[i] = PushResult(req.device_token, 0, error=outcome.error)
            todo = retry
        return [r for r in results if r is not None]

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


def _unsent(results: list[PushResult | None], requests: Sequence[PushRequest], todo: list[int],
            error: str) -> None:
    """No connection: the first request carries the reason, the rest were not sent into it."""
    for n, i in enumerate(todo):
        results[i] = PushResult(requests[i].device_token, 0,
                                error=error if n == 0 else f"not sent: {error}")


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

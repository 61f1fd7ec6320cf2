"""The one small HTTP adapter to APNs: HTTP/2 over TLS, many streams on one connection.

Celery's io workers call this from many threads, synchronously. Each process runs ONE asyncio
event loop in a daemon thread, holding one httpx.AsyncClient(http2=True) per endpoint, hence one
persistent connection; callers submit coroutines with run_coroutine_threadsafe, so every thread's
requests share that connection as concurrent streams. The loop and client are made lazily in the
process that uses them (pid-checked, and forgotten in a forked child), never inherited from a
prefork parent.

No reason handling here: every device gets a PushResult, and the push task decides (delete the
token, retry, re-sign, fail). Transport failures are results too (status 0), never exceptions.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import re
import ssl
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h2.exceptions
import httpx

from config.settings import get_settings
from tasks.apns.apps import App
from tasks.apns.token import get_token
from tasks.backoff import parse_retry_after
from tasks.errors import TransientError

# Streams in flight per process. httpcore caps one HTTP/2 connection at 100 open streams (Apple
# allows 1000; httpcore #598); more waiting inside httpcore only costs CPU (its queue is scanned
# per event) and would start each request's timeout before it can be sent.
MAX_IN_FLIGHT = 100
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
# What a failed stream or connection raises: reported per device as status 0, never raised.
TRANSPORT_ERRORS = (httpx.TransportError, OSError, ssl.SSLError, h2.exceptions.ProtocolError)


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


def headers(app: App, token: str, req: PushRequest) -> dict[str, str]:
    """The request headers exactly as Apple documents them; optional ones only when set."""
    h = {
        "authorization": f"bearer {token}",
        "apns-topic": app.app_id + TOPIC_SUFFIX.get(req.push_type, ""),
        "apns-push-type": req.push_type,
    }
    if req.priority is not None:
        h["apns-priority"] = str(req.priority)
    if req.expiration is not None:
        h["apns-expiration"] = str(req.expiration)
    if req.collapse_id:
        h["apns-collapse-id"] = req.collapse_id
    if req.apns_id:
        h["apns-id"] = req.apns_id
    return h


class _Process:
    """This process's event-loop thread and its clients (one per endpoint and CA)."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self.clients: dict[tuple[str, Path | None], httpx.AsyncClient] = {}
        self.in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)
        self.warm: set[httpx.AsyncClient] = set()  # clients whose connection last answered
        self.thread = threading.Thread(target=self.loop.run_forever, name="apns-loop",
                                       daemon=True)
        self.thread.start()

    def client(self, app: App) -> httpx.AsyncClient:
        # Only ever called on the loop thread, so no lock is needed.
        key = (app.endpoint, app.ca_file)
        if key not in self.clients:
            verify: ssl.SSLContext | bool = True
            if app.ca_file is not None:
                verify = ssl.create_default_context(cafile=str(app.ca_file))
            self.clients[key] = httpx.AsyncClient(
                http1=False, http2=True,  # APNs speaks HTTP/2 only; fail loudly otherwise
                verify=verify,
                # One connection per endpoint: HTTP/2 multiplexes every stream over it.
                limits=httpx.Limits(max_connections=1, max_keepalive_connections=1,
                                    keepalive_expiry=KEEPALIVE),
            )
        return self.clients[key]

    async def send_all(self, app: App, token: str, requests: Sequence[PushRequest],
                       timeout: float) -> list[PushResult]:
        client = self.client(app)
        outage: list[str] = []  # set by the first request that finds APNs unreachable
        first: list[PushResult] = []
        if client not in self.warm:
            # No connection known good: one request opens it alone. httpcore would have every
            # other request of the batch retry the connect in turn, one timeout each.
            first = [await self.send_one(client, app, token, requests[0], timeout, outage)]
        rest = await asyncio.gather(*(self.send_one(client, app, token, r, timeout, outage)
                                      for r in requests[len(first):]))
        return first + list(rest)

    async def send_one(self, client: httpx.AsyncClient, app: App, token: str, req: PushRequest,
                       timeout: float, outage: list[str]) -> PushResult:
        if not _HEX.fullmatch(req.device_token):
            # Would not even make a valid path; Apple's own answer for it, without the trip.
            return PushResult(req.device_token, 400, "BadDeviceToken", error="not hex, not sent")
        error = ""
        async with self.in_flight:
            for retry in (False, True):
                if outage:
                    return PushResult(req.device_token, 0, error=f"not sent: {outage[0]}")
                try:
                    resp = await self.post(client, app, token, req, timeout)
                except (TimeoutError, httpx.TimeoutException):
                    error = f"timeout: no answer in {timeout:g}s"
                    outage.append(error)
                except httpx.ConnectError as exc:  # refused, unresolvable, TLS handshake failed
                    error = f"ConnectError: {exc}"
                    outage.append(error)
                except TRANSPORT_ERRORS as exc:
                    # The connection died under the stream, most often while idle (Apple's
                    # GOAWAY or a NAT's timeout go unnoticed until the next write): once more,
                    # on a new connection. A caller's retry would resend it just the same.
                    error = f"{type(exc).__name__}: {exc}"
                    self.warm.discard(client)
                    if not retry:
                        continue
                else:
                    self.warm.add(client)
                    return _result(req, resp)
                break
        self.warm.discard(client)
        return PushResult(req.device_token, 0, error=error)

    async def post(self, client: httpx.AsyncClient, app: App, token: str, req: PushRequest,
                   timeout: float) -> httpx.Response:
        # httpx times each phase and cleans up after itself; this guard, a little later, also
        # covers waits httpx does not time (a stream slot inside httpcore).
        async with asyncio.timeout(timeout + 1):
            return await client.post(f"{app.endpoint}/3/device/{req.device_token}",
                                     content=req.payload, headers=headers(app, token, req),
                                     timeout=timeout)

    def close(self, timeout: float = 5.0) -> None:
        async def close_all() -> None:
            await asyncio.gather(*(c.aclose() for c in self.clients.values()),
                                 return_exceptions=True)

        try:
            asyncio.run_coroutine_threadsafe(close_all(), self.loop).result(timeout)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout)
            if not self.thread.is_alive():
                self.loop.close()


def _result(req: PushRequest, resp: httpx.Response) -> PushResult:
    reason = timestamp = None
    if resp.status_code != 200 and resp.content:
        try:
            body = resp.json()
            reason, timestamp = body.get("reason"), int(body.get("timestamp") or 0) or None
        except (ValueError, AttributeError, TypeError):
            reason = resp.text[:200]  # not Apple's JSON (a proxy's page?): keep a hint
    return PushResult(req.device_token, resp.status_code, reason, timestamp,
                      resp.headers.get("apns-id"),
                      parse_retry_after(resp.headers.get("retry-after")))


_proc: _Process | None = None
_proc_lock = threading.Lock()
_orphans: list[_Process] = []


def _process() -> _Process:
    global _proc
    proc = _proc
    if proc is not None and proc.pid == os.getpid():
        return proc
    with _proc_lock:
        if _proc is None or _proc.pid != os.getpid():
            _proc = _Process()
        return _proc


def _after_fork_in_child() -> None:
    # The parent's loop thread does not exist here and its sockets are the parent's: never
    # close them from the child (that would send GOAWAY on the parent's connection). Keep a
    # reference so no destructor runs either, and start afresh on first use.
    global _proc, _proc_lock
    if _proc is not None:
        _orphans.append(_proc)
    _proc, _proc_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def close() -> None:
    """Close this process's connections and stop its loop (worker shutdown)."""
    global _proc
    proc, _proc = _proc, None
    if proc is not None and proc.pid == os.getpid():
        proc.close()


def process_info() -> tuple[int, int, int] | None:
    """(pid, loop thread ident, id of the loop) of this process's adapter, or None (tests)."""
    proc = _proc
    if proc is None or proc.pid != os.getpid():
        return None
    return proc.pid, proc.thread.ident or 0, id(proc.loop)

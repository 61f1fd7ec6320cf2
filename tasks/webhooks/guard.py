"""The SSRF-guarded HTTP/1.1 client every request to a subscriber goes through (the challenge at
subscription time and every delivery), on the stdlib's http.client.
Long because the check and the connect must be one step (no DNS rebinding between them).

A callback URL is whatever a subscriber typed, so it may name the farm's own network: Redis on
10.0.0.5, the cloud metadata service on 169.254.169.254, an admin port on 127.0.0.1. So:

- the host is resolved once (``socket.getaddrinfo``) and refused if ANY of its addresses is
  loopback, private, link-local (the metadata address among them), multicast, reserved,
  unspecified, shared (100.64.0.0/10), the IPv6 metadata address fd00:ec2::254, or an IPv6 form
  that carries one of those (IPv4-mapped, 6to4, NAT64, Teredo), unless it lies inside
  FARM_WEBHOOK_ALLOW_NETWORKS (tests, a demo receiver on this machine). A refusal is
  :class:`Refused`, naming the address and why, raised before any byte is sent;
- the socket connects to THAT vetted address: the name is never resolved a second time, so a
  name that answers a public address to the check and a private one to the connect (DNS
  rebinding) gets nowhere. The Host header, TLS SNI and the certificate check use the host name;
- redirects are never followed (a 3xx comes back as an answer, which a delivery counts as a
  failure): a redirect is a second URL that was never vetted;
- FARM_WEBHOOK_TIMEOUT is one deadline for the whole exchange: the name lookup (on a resolver
  thread, waited for only that long), the connect, the TLS handshake, and every read, each
  given only the time left, so a server dribbling its answer a byte at a time cannot hold a
  thread longer than that (give or take DEADLINE_SLACK);
- at most FARM_WEBHOOK_MAX_RESPONSE_BYTES of an answer's body are read; more is cut off (the
  answer says ``truncated``) and that connection is not reused.

A request's head and body go out in one write (http.client writes them apart). Connections
are kept alive and reused per (scheme, host, port, vetted address) in a small
per-process pool (a :class:`ProcessLocal`, so a forked child starts with none): a delivery to a
subscriber already answered a moment ago costs one round trip, not a TCP and TLS handshake. A
connection is only put back after its answer was read whole, and one the server has closed
while idle is noticed before use; a request that fails on a reused connection before any answer
arrived is sent once more on a fresh one (webhooks are at least once; the receiver dedupes on
webhook-id).

Why not a library: ``advocate`` (the requests wrapper that does this) last released 1.0.0 in
July 2020, requires urllib3 < 2 (the farm runs urllib3 2.x under requests and botocore) and
the unmaintained ``netifaces``. The younger SSRF-safe clients on PyPI (httpx wrappers at 0.1.x)
pull in httpx's stack and per-request cost for what is one connect override on http.client.
"""

from __future__ import annotations

import http.client
import io
import ipaddress
import math
import select
import socket
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextvars import ContextVar
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import SplitResult, urlsplit

from config.settings import Settings, get_settings
from tasks.core.errors import PermanentError, TransientError
from tasks.core.process_local import ProcessLocal

MAX_URL = 2048  # characters: what browsers and most servers accept, and room for any real hook
# Idle keep-alive connections kept per (scheme, host, port, address): one per io thread of a
# worker process (FARM_IO_THREADS, 32 by default) is the most that can be busy at once.
MAX_IDLE_PER_KEY = 32
MAX_IDLE = 512  # idle connections a process keeps in all: file descriptors are not free
# An idle connection older than this is closed rather than reused: servers drop idle
# keep-alive connections after 5 s (Node) to 75 s (nginx); a stale one costs a failed write.
MAX_IDLE_SECONDS = 30.0
USER_AGENT = "Photofarm-Webhooks/1.0"
RESOLVER_THREADS = 16  # name lookups in flight per process; a stuck resolver holds one each
DEADLINE_SLACK = 0.05  # seconds a read may end past the deadline, to spare a syscall a read

METADATA_V4 = ipaddress.IPv4Address("169.254.169.254")  # AWS, GCP, Azure, ... (link-local)
METADATA_V6 = ipaddress.IPv6Address("fd00:ec2::254")  # AWS' IPv6 metadata endpoint
SHARED = ipaddress.IPv4Network("100.64.0.0/10")  # RFC 6598 carrier-grade NAT: not public
NAT64 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Refused(PermanentError):
    """A URL or address the farm will not send to; nothing was sent. ``address`` is the refused
    address (None when the URL itself is refused), ``why`` the reason in a few words."""

    def __init__(self, url: str, why: str, address: str | None = None) -> None:
        where = f" ({address})" if address else ""
        super().__init__(f"refused {_shown(url)}{where}: {why}")
        self.url, self.why, self.address = url, why, address


class Unreachable(TransientError):
    """No usable answer: the name does not resolve, the connect failed or was refused, the
    connection was reset, TLS failed, the answer was not HTTP. Worth trying again later."""


class TimedOut(Unreachable):
    """The connect or the answer took longer than FARM_WEBHOOK_TIMEOUT."""


@dataclass(frozen=True)
class Answer:
    status: int
    reason: str
    headers: Mapping[str, str]  # lower-case names; a repeated header: its values joined by ", "
    body: bytes  # at most FARM_WEBHOOK_MAX_RESPONSE_BYTES
    truncated: bool  # the body went on past the cap (and was not read)
    address: str  # the vetted address the request went to
    reused: bool  # carried by a kept-alive connection

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


# --- the URL and the addresses -------------------------------------------------------------------

def check_url(url: str) -> SplitResult:
    """The URL split, or ValueError saying what is wrong: http(s) only, a host, no user info,
    no fragment, no whitespace or control characters, at most MAX_URL characters."""
    if not isinstance(url, str) or not url:
        raise ValueError("callback URL: must be a non-empty string")
    if len(url) > MAX_URL:
        raise ValueError(f"callback URL: longer than {MAX_URL} characters")
    if any(c <= " " or c == "\x7f" for c in url):
        raise ValueError("callback URL: must not contain spaces or control characters")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"callback URL: must be http:// or https://, got {parts.scheme or '-'}")
    if "@" in parts.netloc:
        raise ValueError("callback URL: must not carry a user name or password")
    if not parts.hostname:
        raise ValueError("callback URL: has no host")
    if parts.fragment or url.endswith("#"):
        raise ValueError("callback URL: must not have a #fragment")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("callback URL: the port is not a number from 1 to 65535") from None
    if port == 0:
        raise ValueError("callback URL: the port is not a number from 1 to 65535")
    return parts


def why_refused(address: IPAddress) -> str | None:
    """Why an address must not be sent to, or None for a public one."""
    if isinstance(address, ipaddress.IPv6Address):
        if address == METADATA_V6:
            return "the cloud metadata address"
        inner = _embedded_v4(address)
        if inner is not None:
            form, v4 = inner
            why = why_refused(v4)
            return f"{form} form of {v4}, {why}" if why else None
    if address == METADATA_V4:
        return "the cloud metadata address (link-local)"
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if isinstance(address, ipaddress.IPv4Address) and address in SHARED:
        return "shared address space (100.64.0.0/10)"
    if address.is_private:
        return "private"
    if address.is_reserved:
        return "reserved"
    if not address.is_global:
        return "not globally routable"
    return None


def _embedded_v4(address: ipaddress.IPv6Address) -> tuple[str, ipaddress.IPv4Address] | None:
    """The IPv4 address an IPv6 one reaches (mapped, 6to4, NAT64, Teredo's client), if any."""
    if address.ipv4_mapped is not None:
        return "IPv4-mapped", address.ipv4_mapped
    if address.sixtofour is not None:
        return "6to4", address.sixtofour
    for net in NAT64:
        if address in net:
            return "NAT64", ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.teredo is not None:
        return "Teredo", address.teredo[1]
    return None


def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@lru_cache(maxsize=4096)
def _verdict(text: str, allowed: tuple[str, ...]) -> str | None:
    """Why a resolved address is refused under these allowed networks, or None (cached: the
    answer for an address never changes, and the checks cost more than the rest of a lookup)."""
    try:
        address = ipaddress.ip_address(text.partition("%")[0])  # fe80::1%eth0: zone dropped
    except ValueError:
        return "not an IP"
    why = why_refused(address)
    if why is None or _allowed(address, _networks(allowed)):
        return None
    return why


@lru_cache(maxsize=16)
def _networks(allowed: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(n, strict=False) for n in allowed)


def _allowed(address: IPAddress, networks: tuple[IPNetwork, ...]) -> bool:
    candidates: list[IPAddress] = [address]
    if isinstance(address, ipaddress.IPv6Address):
        inner = _embedded_v4(address)
        if inner is not None:
            candidates.append(inner[1])
    return any(a in net for a in candidates for net in networks if a.version == net.version)


_resolvers: ProcessLocal[str, ThreadPoolExecutor] = ProcessLocal("webhook resolvers")


def _resolve(host: str, port: int) -> list[Any]:
    """getaddrinfo within the request's deadline: the system resolver has no timeout of its own
    but resolv.conf's (5 s a try, by default), so a name is looked up on a resolver thread and
    waited for only as long as the deadline allows. An address literal needs no thread."""
    if _is_literal(host):
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    pool = _resolvers.get("pool", lambda: ThreadPoolExecutor(RESOLVER_THREADS,
                                                             thread_name_prefix="webhook-dns"))
    lookup = pool.submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
    deadline = _deadline.get()
    try:
        return lookup.result(timeout=None if deadline == math.inf
                             else max(0.0, deadline - time.monotonic()))
    except FutureTimeout:
        lookup.cancel()
        raise TimedOut(f"{host}: no answer from the resolver in time") from None


def vet(url: str, host: str, port: int, s: Settings) -> list[str]:
    """Every address ``host`` resolves to, resolved once; Refused if any one of them is not
    public and not inside FARM_WEBHOOK_ALLOW_NETWORKS, Unreachable if it does not resolve."""
    try:
        infos = _resolve(host, port)
    except (socket.gaierror, UnicodeError) as exc:
        raise Unreachable(f"{host}: does not resolve ({exc})") from None
    addresses: list[str] = []
    for info in infos:
        text = str(info[4][0])
        why = _verdict(text, s.webhook_allow_networks)
        if why is not None:
            raise Refused(url, f"{why} address" if _is_literal(host)
                          else f"{host} resolves to {text}: {why} address", text)
        if text not in addresses:
            addresses.append(text)
    if not addresses:
        raise Unreachable(f"{host}: does not resolve")
    return addresses


# --- connections pinned to the vetted address ----------------------------------------------------

# The deadline of the request this thread is making (time.monotonic()); every read of an answer
# is given only what is left of it.
_deadline: ContextVar[float] = ContextVar("webhook_deadline", default=math.inf)


class _DeadlineReader(io.RawIOBase):
    """The socket's reader, each read given only the time left until the request's deadline."""

    def __init__(self, sock: socket.socket, raw: Any) -> None:
        super().__init__()
        self._sock, self._raw = sock, raw

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        _bound(self._sock, _deadline.get() - time.monotonic())
        return int(self._raw.readinto(buffer))

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


def _bound(sock: socket.socket, left: float) -> None:
    """The socket's timeout no longer than ``left`` (TimeoutError if nothing is left). Reset
    only when it is more than DEADLINE_SLACK too long: each reset is a system call, and a read
    that ends within the slack past the deadline is close enough."""
    if left <= 0:
        raise TimeoutError("the answer took longer than the deadline")
    current = sock.gettimeout()
    if current is None or current > left + DEADLINE_SLACK:
        sock.settimeout(left)


class _Response(http.client.HTTPResponse):
    def __init__(self, sock: socket.socket, debuglevel: int = 0, method: str | None = None,
                 url: str | None = None) -> None:
        super().__init__(sock, debuglevel, method, url)
        self.fp = io.BufferedReader(_DeadlineReader(sock, self.fp.detach()))


class _Pinned(http.client.HTTPConnection):
    """HTTP to ``host`` (Host header) over a socket connected to the vetted ``address``."""

    response_class = _Response

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.address = address
        self.idle_since = 0.0
        self._corked: list[bytes] | None = None

    def connect(self) -> None:
        self.sock = socket.create_connection((self.address, self.port), self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(self, data: Any) -> None:
        if self._corked is not None:
            self._corked.append(bytes(data))
        else:
            super().send(data)

    def send_request(self, method: str, target: str, body: bytes | None,
                     headers: Mapping[str, str]) -> None:
        """The request's head and body in one write: http.client writes them apart, which costs
        a second system call and, with TCP_NODELAY, a second packet."""
        self._corked = []
        try:
            self.request(method, target, body=body, headers=dict(headers))
            data = b"".join(self._corked)
        finally:
            self._corked = None
        self.send(data)


class _PinnedTLS(_Pinned):
    """HTTPS: TLS with SNI and the certificate checked against the host name, not the address."""

    default_port = 443

    def __init__(self, host: str, port: int, address: str, timeout: float,
                 context: ssl.SSLContext) -> None:
        super().__init__(host, port, address, timeout)
        self.context = context

    def connect(self) -> None:
        super().connect()
        tls = self.context.wrap_socket(self.sock, server_hostname=self.host,
                                       do_handshake_on_connect=False)
        self.sock = tls
        _handshake(tls, _deadline.get())


def _handshake(tls: ssl.SSLSocket, deadline: float) -> None:
    """The TLS handshake within the deadline as a whole (blocking, each of its reads would get
    the whole timeout again)."""
    timeout = tls.gettimeout()
    tls.setblocking(False)
    poller = select.poll()
    poller.register(tls, select.POLLIN | select.POLLOUT)
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            poller.modify(tls, select.POLLIN)
        except ssl.SSLWantWriteError:
            poller.modify(tls, select.POLLOUT)
        left = deadline - time.monotonic()
        if left <= 0 or not poller.poll(left * 1000):
            raise TimeoutError("the TLS handshake took longer than the deadline")
    tls.settimeout(timeout)


_contexts: ProcessLocal[str, ssl.SSLContext] = ProcessLocal("webhook TLS context")


def tls_context() -> ssl.SSLContext:
    """The process's TLS context: the system's CAs, certificates and host names checked."""
    return _contexts.get("default", ssl.create_default_context)


PoolKey = tuple[str, str, int, str]  # scheme, host, port, vetted address


class _Pool:
    """Idle keep-alive connections, newest used first; bounded per key and in all."""

    def __init__(self) -> None:
        self._idle: OrderedDict[PoolKey, list[_Pinned]] = OrderedDict()
        self._count = 0
        self._lock = threading.Lock()

    def take(self, key: PoolKey) -> _Pinned | None:
        stale: list[_Pinned] = []
        found = None
        now = time.monotonic()
        with self._lock:
            conns = self._idle.get(key)
            while conns:
                conn = conns.pop()
                self._count -= 1
                if now - conn.idle_since < MAX_IDLE_SECONDS:
                    found = conn
                    break
                stale.append(conn)
            if conns is not None and not conns:
                del self._idle[key]
        for conn in stale:
            conn.close()
        if found is not None and not _still_open(found):
            found.close()
            return None
        return found

    def has(self, key: PoolKey) -> bool:
        return bool(self._idle.get(key))

    def give(self, key: PoolKey, conn: _Pinned) -> None:
        conn.idle_since = time.monotonic()
        evicted: list[_Pinned] = []
        with self._lock:
            conns = self._idle.setdefault(key, [])
            self._idle.move_to_end(key)
            conns.append(conn)
            self._count += 1
            if len(conns) > MAX_IDLE_PER_KEY:
                evicted.append(conns.pop(0))
                self._count -= 1
            while self._count > MAX_IDLE:
                oldest_key = next(iter(self._idle))
                oldest = self._idle[oldest_key]
                evicted.append(oldest.pop(0))
                self._count -= 1
                if not oldest:
                    del self._idle[oldest_key]
        for old in evicted:
            old.close()

    def idle(self) -> int:
        return self._count

    def close_all(self) -> None:
        with self._lock:
            conns = [c for group in self._idle.values() for c in group]
            self._idle.clear()
            self._count = 0
        for conn in conns:
            conn.close()


_pools: ProcessLocal[str, _Pool] = ProcessLocal("webhook connections")


def pool() -> _Pool:
    return _pools.get("pool", _Pool)


def _still_open(conn: _Pinned) -> bool:
    """False when an idle connection's server has closed it (or sent something unasked)."""
    sock = conn.sock
    if sock is None:
        return False
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return False
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return not poller.poll(0)


# --- the request --------------------------------------------------------------------------------

STALE = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError,
         http.client.RemoteDisconnected)


def request(method: str, url: str, *, body: bytes | None = None,
            headers: Mapping[str, str] | None = None, s: Settings | None = None) -> Answer:
    """One request through the guard: Refused (nothing sent), Unreachable or TimedOut (no
    answer), else the Answer, whatever its status (redirects are answers, never followed)."""
    s = s or get_settings()
    try:
        parts = check_url(url)
    except ValueError as exc:
        raise Refused(url, str(exc).removeprefix("callback URL: ")) from None
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    deadline = time.monotonic() + s.webhook_timeout
    token = _deadline.set(deadline)
    try:
        addresses = vet(url, host, port, s)
        the_pool = pool()
        address = next((a for a in addresses if the_pool.has((parts.scheme, host, port, a))),
                       addresses[0])
        key = (parts.scheme, host, port, address)
        sent_headers = {"User-Agent": USER_AGENT, **(headers or {})}
        conn = the_pool.take(key)
        if conn is not None:
            try:
                return _exchange(conn, key, method, target, body, sent_headers, s, reused=True)
            except _Stale:
                pass  # the server closed it while idle: once more on a fresh connection
        conn = _connect(parts.scheme, host, port, address, deadline, s)
        try:
            return _exchange(conn, key, method, target, body, sent_headers, s, reused=False)
        except _Stale as exc:
            raise Unreachable(f"{host}: {_error(exc.__cause__)}") from exc.__cause__
    finally:
        _deadline.reset(token)


class _Stale(Exception):
    """The connection failed before any answer arrived."""


def _connect(scheme: str, host: str, port: int, address: str, deadline: float,
             s: Settings) -> _Pinned:
    left = max(0.001, min(s.webhook_timeout, deadline - time.monotonic()))
    conn = (_PinnedTLS(host, port, address, left, tls_context()) if scheme == "https"
            else _Pinned(host, port, address, left))
    try:
        conn.connect()
    except TimeoutError:
        conn.close()
        raise TimedOut(f"{host} ({address}): no connection within {s.webhook_timeout:g}s") \
            from None
    except (OSError, ssl.SSLError) as exc:
        conn.close()
        raise Unreachable(f"{host} ({address}): {_error(exc)}") from None
    return conn


def _exchange(conn: _Pinned, key: PoolKey, method: str, target: str, body: bytes | None,
              headers: Mapping[str, str], s: Settings, *, reused: bool) -> Answer:
    """Send, read the answer within the deadline; the connection goes back to the pool only if
    the answer was read whole and the server keeps it open."""
    host, address = key[1], key[3]
    keep = False
    try:
        left = _deadline.get() - time.monotonic()
        if left <= 0:
            raise TimeoutError
        if conn.sock is not None:  # a kept-alive socket still has its last request's timeout
            conn.sock.settimeout(left)
        try:
            conn.send_request(method, target, body, headers)
            response = conn.getresponse()
        except STALE as exc:
            raise _Stale() from exc
        cap = s.webhook_max_response_bytes
        data = response.read(cap)
        truncated = False
        if not response.isclosed():
            truncated = bool(response.read(1))
        keep = response.isclosed() and not truncated and conn.sock is not None
        answer = Answer(response.status, response.reason,
                        _headers(response.getheaders()), data, truncated, address, reused)
    except _Stale:
        raise
    except TimeoutError:
        raise TimedOut(f"{host} ({address}): no answer within {s.webhook_timeout:g}s") from None
    except (OSError, ssl.SSLError, http.client.HTTPException) as exc:
        raise Unreachable(f"{host} ({address}): {_error(exc)}") from None
    finally:
        if keep:
            pool().give(key, conn)
        else:
            conn.close()
    return answer


def _headers(pairs: list[tuple[str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in pairs:
        low = name.lower()
        out[low] = f"{out[low]}, {value}" if low in out else value
    return out


def _error(exc: BaseException | None) -> str:
    if exc is None:
        return "connection failed"
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _shown(url: str) -> str:
    return repr(url if len(url) <= 100 else url[:97] + "...")

"""The SSRF guard against a real local server: refusals before any byte is sent, the connect
pinned to the vetted address, no redirects followed, one deadline, the size cap, keep-alive."""

from __future__ import annotations

import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tasks.webhooks import guard
from tests.webhooks.conftest import Configure
from workers.demo_webhooks import WebhookReceiver

PUBLIC = "93.184.216.34"  # a public address; nothing is ever sent to it (connects are faked)


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Every address the guard connects to; the real connect happens only for loopback (the
    receiver), anything else is refused at once so no test reaches the internet."""
    seen: list[tuple[str, int]] = []
    real = socket.create_connection

    def spy(address: tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
        seen.append((address[0], address[1]))
        if not ipaddress.ip_address(address[0]).is_loopback:
            raise ConnectionRefusedError(111, "refused by the test")
        return real(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", spy)
    return seen


Resolve = Callable[[str, list[str] | Callable[[], list[str]]], list[str]]


@pytest.fixture
def names(monkeypatch: pytest.MonkeyPatch) -> Iterator[Resolve]:
    """names("rebind.test", ["1.2.3.4"]): what getaddrinfo answers for a name (a list, or a
    function called at each lookup); returns the log of lookups of made-up names. Every other
    name resolves as usual."""
    table: dict[str, list[str] | Callable[[], list[str]]] = {}
    lookups: list[str] = []
    real = socket.getaddrinfo

    def fake(host: Any, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        if host not in table:
            return real(host, port, *args, **kwargs)
        lookups.append(str(host))
        answer = table[host]
        addresses = answer() if callable(answer) else answer
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "",
                 (a, port)) for a in addresses]

    monkeypatch.setattr(socket, "getaddrinfo", fake)

    def add(name: str, answer: list[str] | Callable[[], list[str]]) -> list[str]:
        table[name] = answer
        return lookups

    yield add


@pytest.fixture
def strict(configure: Configure) -> None:
    """The production default: no network allowed despite being private."""
    configure(FARM_WEBHOOK_ALLOW_NETWORKS="")


# -- refusals ------------------------------------------------------------------------------------

@pytest.mark.parametrize("url, why", [
    ("http://127.0.0.1:{port}/hook", "loopback address"),
    ("http://10.0.0.1/", "private address"),
    ("http://169.254.169.254/latest/meta-data/", "metadata"),
    ("http://[::1]:{port}/hook", "loopback address"),
    ("http://[::ffff:127.0.0.1]:{port}/hook", "IPv4-mapped form of 127.0.0.1, loopback"),
    ("http://localhost:{port}/hook", "localhost resolves to 127.0.0.1: loopback"),
    ("http://[fd00:ec2::254]/", "metadata"),
    ("http://100.64.0.1/", "shared address space"),
    ("http://0.0.0.0:{port}/", "unspecified"),
    ("http://224.0.0.1/", "multicast"),
    ("http://[2002:7f00:1::]:{port}/", "6to4 form of 127.0.0.1"),
    ("http://[64:ff9b::a00:1]/", "NAT64 form of 10.0.0.1"),
    ("http://192.168.1.1/", "private address"),
    ("http://[fe80::1]/", "link-local"),
    ("http://2130706433:{port}/", "resolves to 127.0.0.1: loopback"),
])
@pytest.mark.usefixtures("strict")
def test_refused_before_any_byte(receiver: WebhookReceiver, connects: list[tuple[str, int]],
                                 url: str, why: str) -> None:
    target = url.format(port=receiver.port)
    with pytest.raises(guard.Refused, match=why) as refused:
        guard.request("POST", target, body=b"{}")
    assert refused.value.address  # names the address it refused
    assert connects == []  # nothing connected anywhere
    assert receiver.connections == 0 and receiver.requests == []


@pytest.mark.usefixtures("strict")
def test_a_name_with_any_private_address_is_refused(names: Resolve,
                                                    connects: list[tuple[str, int]]) -> None:
    names("mixed.test", [PUBLIC, "127.0.0.1"])
    with pytest.raises(guard.Refused, match=r"mixed.test resolves to 127.0.0.1: loopback"):
        guard.request("POST", "http://mixed.test/hook", body=b"{}")
    assert connects == []


@pytest.mark.usefixtures("strict")
def test_dns_rebinding_connects_only_to_the_vetted_address(
        names: Resolve, connects: list[tuple[str, int]], receiver: WebhookReceiver) -> None:
    """A name that answers public to the check and loopback afterwards: resolved once, and the
    connect goes to the public address it was vetted as, never to a second answer."""
    answers = iter([[PUBLIC], ["127.0.0.1"], ["127.0.0.1"]])
    lookups = names("rebind.test", lambda: next(answers))
    with pytest.raises(guard.Unreachable):
        guard.request("POST", f"http://rebind.test:{receiver.port}/hook", body=b"{}")
    assert lookups == ["rebind.test"]  # one resolution per request
    assert connects == [(PUBLIC, receiver.port)]
    assert receiver.connections == 0
    # The next request resolves again, to loopback this time: refused.
    with pytest.raises(guard.Refused, match="loopback"):
        guard.request("POST", f"http://rebind.test:{receiver.port}/hook", body=b"{}")
    assert connects == [(PUBLIC, receiver.port)] and receiver.connections == 0


@pytest.mark.usefixtures("configure")
def test_allowed_network_and_the_host_name_kept(names: Resolve, receiver: WebhookReceiver,
                                                connects: list[tuple[str, int]]) -> None:
    names("hooks.test", ["127.0.0.1"])
    answer = guard.request("POST", f"http://hooks.test:{receiver.port}/a?x=1", body=b"{}",
                           headers={"Content-Type": "application/json"})
    assert answer.status == 200 and answer.body == b"ok" and answer.address == "127.0.0.1"
    (got,) = receiver.received("/a")
    assert got.headers["host"] == f"hooks.test:{receiver.port}"
    assert connects == [("127.0.0.1", receiver.port)]


@pytest.mark.parametrize("url, why", [
    ("ftp://example.com/", "http:// or https://"),
    ("http://user:pw@example.com/", "user name or password"),
    ("http://example.com/a b", "spaces"),
    ("http://example.com/#frag", "fragment"),
    ("http:///nohost", "no host"),
    ("http://example.com:99999/", "port"),
    ("http://example.com/" + "a" * 2100, "longer than 2048"),
])
def test_bad_urls_are_refused(url: str, why: str, configure: Configure) -> None:
    with pytest.raises(ValueError, match=why):
        guard.check_url(url)
    with pytest.raises(guard.Refused, match=why):
        guard.request("GET", url)


@pytest.mark.parametrize("address, refused", [
    ("8.8.8.8", False), ("2606:4700::1", False), ("::ffff:8.8.8.8", False),
    ("2002:808:808::1", False), ("169.254.169.254", True), ("fd00:ec2::254", True),
    ("::ffff:10.1.2.3", True), ("100.127.255.255", True), ("198.18.0.1", True),
    ("240.0.0.1", True), ("255.255.255.255", True), ("::", True), ("ff02::1", True),
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", True),
])
def test_address_rules(address: str, refused: bool) -> None:
    assert (guard.why_refused(ipaddress.ip_address(address)) is not None) is refused


# -- answers -------------------------------------------------------------------------------------

@pytest.mark.usefixtures("configure")
def test_redirect_is_an_answer_not_followed(receiver: WebhookReceiver) -> None:
    receiver.redirect_next(1, location=receiver.url("/elsewhere"))
    answer = guard.request("POST", receiver.url("/a"), body=b"{}")
    assert answer.status == 302 and not answer.ok
    assert answer.headers["location"].endswith("/elsewhere")
    assert receiver.requests == [("POST", "/a")]


def test_a_silent_server_times_out(receiver: WebhookReceiver, configure: Configure) -> None:
    configure(FARM_WEBHOOK_TIMEOUT="0.5")
    receiver.slow_next(1, seconds=5)
    started = time.monotonic()
    with pytest.raises(guard.TimedOut, match=r"no answer within 0\.5s"):
        guard.request("POST", receiver.url(), body=b"{}")
    assert time.monotonic() - started < 2


def test_a_dribbling_server_hits_the_overall_deadline(receiver: WebhookReceiver,
                                                      configure: Configure) -> None:
    """Each byte comes well within the timeout, the whole answer does not: one deadline."""
    configure(FARM_WEBHOOK_TIMEOUT="1")
    receiver.slow_next(1, seconds=4, dribble=True)
    started = time.monotonic()
    with pytest.raises(guard.TimedOut):
        guard.request("POST", receiver.url(), body=b"{}")
    assert time.monotonic() - started < 2


def test_a_stuck_resolver_is_waited_for_only_until_the_deadline(
        names: Resolve, configure: Configure) -> None:
    configure(FARM_WEBHOOK_TIMEOUT="0.5")
    release = threading.Event()

    def stuck() -> list[str]:
        release.wait(10)
        return [PUBLIC]

    names("stuck.test", stuck)
    started = time.monotonic()
    try:
        with pytest.raises(guard.TimedOut, match="resolver"):
            guard.request("POST", "http://stuck.test/hook", body=b"{}")
        assert time.monotonic() - started < 2
    finally:
        release.set()


def test_a_silent_tls_server_hits_the_deadline(configure: Configure) -> None:
    """TCP accepted (by the kernel's backlog), the TLS handshake never answered."""
    configure(FARM_WEBHOOK_TIMEOUT="0.5")
    with socket.create_server(("127.0.0.1", 0)) as silent:
        started = time.monotonic()
        with pytest.raises(guard.TimedOut):
            guard.request("POST", f"https://127.0.0.1:{silent.getsockname()[1]}/", body=b"{}")
        assert time.monotonic() - started < 2


@pytest.mark.parametrize("chunked", [False, True])
def test_the_answer_is_cut_at_the_cap(receiver: WebhookReceiver, configure: Configure,
                                      chunked: bool) -> None:
    configure(FARM_WEBHOOK_MAX_RESPONSE_BYTES="1000")
    receiver.huge_next(1, size=5_000_000, chunked=chunked)
    answer = guard.request("POST", receiver.url(), body=b"{}")
    assert answer.ok and answer.truncated and len(answer.body) == 1000
    # That connection was not reused (its answer was not read whole); the next one is fine.
    again = guard.request("POST", receiver.url(), body=b"{}")
    assert again.body == b"ok" and not again.truncated and not again.reused
    assert receiver.connections == 2


def test_an_answer_exactly_at_the_cap_is_whole(receiver: WebhookReceiver,
                                               configure: Configure) -> None:
    configure(FARM_WEBHOOK_MAX_RESPONSE_BYTES="1000")
    receiver.huge_next(1, size=1000, chunked=True)
    answer = guard.request("POST", receiver.url(), body=b"{}")
    assert len(answer.body) == 1000 and not answer.truncated


@pytest.mark.usefixtures("configure")
def test_keep_alive_connections_are_reused(receiver: WebhookReceiver) -> None:
    first = guard.request("POST", receiver.url("/a"), body=b"{}")
    second = guard.request("POST", receiver.url("/b"), body=b"{}")
    assert (first.reused, second.reused) == (False, True)
    assert receiver.connections == 1


# -- a server that closes idle connections --------------------------------------------------------

class OneShotServer:
    """Answers one request per connection with a keep-alive 200, then closes it: what a server
    with a short keep-alive timeout does to an idle pooled connection."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.closed = threading.Semaphore(0)  # released once per connection closed
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            self.closed.release()

    def close(self) -> None:
        self.sock.close()


@pytest.mark.usefixtures("configure")
def test_a_connection_closed_while_idle_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    server = OneShotServer()
    try:
        url = f"http://127.0.0.1:{server.port}/"
        assert guard.request("GET", url).ok
        assert server.closed.acquire(timeout=5)
        assert guard.request("GET", url).ok  # noticed closed before use: a fresh connection
        # Closed after the check (the race the check cannot see): sent again on a fresh one.
        assert server.closed.acquire(timeout=5)
        monkeypatch.setattr(guard, "_still_open", lambda conn: True)
        answer = guard.request("GET", url)
        assert answer.ok and not answer.reused
        assert server.connections == 3
    finally:
        server.close()


# -- TLS: SNI and the certificate checked against the host name, connect to the vetted address --

def test_https_checks_the_certificate_against_the_host_name(
        monkeypatch: pytest.MonkeyPatch, names: Resolve, configure: Configure) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("hooks.test").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    monkeypatch.setattr(guard, "tls_context", lambda: client_ctx)
    names("hooks.test", ["127.0.0.1"])
    names("other.test", ["127.0.0.1"])
    with WebhookReceiver(tls=server_ctx) as hooks:
        answer = guard.request("POST", hooks.url("/a", host="hooks.test"), body=b"{}")
        assert answer.ok and answer.body == b"ok"
        with pytest.raises(guard.Unreachable, match=r"CERTIFICATE_VERIFY_FAILED|match"):
            guard.request("POST", hooks.url("/b", host="other.test"), body=b"{}")
        assert [path for _, path in hooks.requests] == ["/a"]

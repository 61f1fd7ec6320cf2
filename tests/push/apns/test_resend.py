"""What the APNs client (tasks/push/apns/client.py) sends again and what it never does, held to
both independent servers: the ``h2`` package (h2_server.py) and Node's built-in ``http2``
(nghttp2; node_server.py), each scripted the same way per device token.

- A request the server guarantees it did not process (RST_STREAM REFUSED_STREAM, past a GOAWAY's
  last stream id) is resent, up to RESEND_ATTEMPTS tries within about one timeout.
- A request reset after the server read it (INTERNAL_ERROR), or left unanswered past its
  deadline, has an unknown outcome: reported ``unknown`` and never resent.
- A late stream is cancelled alone (RST_STREAM CANCEL); the connection and the other streams
  carry on.
- A request's timeout runs from when it gets a stream, not while it waits for one.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest

from tasks.push.apns import client
from tasks.push.apns.apps import App
from tasks.push.apns.client import RESEND_ATTEMPTS, PushRequest, send_many
from tests.push.apns.h2_server import MAX_STREAMS, H2Server, Peer, Seen
from tests.push.apns.node_server import NodeH2Server
from tests.support.workers import wait_for

APP_ID = "com.example.photos"
TOKEN = "eyJhbGciOiJFUzI1NiIsImtpZCI6IkFCQ0RFRkdISUoifQ.eyJpc3MiOiJURUFNIn0.c2lnbmF0dXJl"
PAYLOAD = b'{"aps":{"alert":"hi"}}'


def device(i: int) -> str:
    return f"{i:064x}"


def requests(n: int) -> list[PushRequest]:
    return [PushRequest(device(i), PAYLOAD) for i in range(n)]


class Scripted(Protocol):
    """A server scripted per device token: actions "ok", "silent", "refuse", "internal"."""

    port: int

    def received(self) -> Counter[str]: ...  # requests per device token, refused ones too

    def delivered(self) -> list[str]: ...  # device tokens answered 200, one per delivery

    def cancelled(self) -> list[str]: ...  # device tokens whose stream we reset with CANCEL

    def connections(self) -> int: ...


class H2Scripted:
    """The h2 server, scripted as node_h2_server.js is."""

    def __init__(self, serve: Callable[..., H2Server], rules: dict[str, list[str]],
                 max_streams: int = 100, delay: float = 0.0, goaway_after: int = 0) -> None:
        self.rules = {token: list(actions) for token, actions in rules.items()}
        self.delay, self.goaway_after = delay, goaway_after
        self.lock = threading.Lock()
        self.seen: Counter[str] = Counter()
        self.answered: list[str] = []
        self.actions: dict[tuple[int, int], str] = {}
        self.counts: Counter[int] = Counter()  # requests per connection
        self.last: dict[int, int] = {}  # a connection's GOAWAY last stream id
        self.server = serve(settings={MAX_STREAMS: max_streams}, on_request=self.on_request,
                            answer=self.answer)
        self.port = self.server.port

    def on_request(self, peer: Peer, seen: Seen) -> None:
        token = seen.fields[":path"].rsplit("/", 1)[1]
        with self.lock:
            self.seen[token] += 1
            actions = self.rules.get(token) or ["ok"]
            action = actions.pop(0) if len(actions) > 1 else actions[0]
            if action != "refuse":
                self.counts[id(peer)] += 1
                if self.counts[id(peer)] == self.goaway_after:
                    self.last[id(peer)] = seen.id
                    peer.goaway(seen.id, 0, b"bye")
                if seen.id > self.last.get(id(peer), seen.id):
                    action = "past-goaway"
            self.actions[id(peer), seen.id] = action
        if action == "refuse":
            peer.h2.reset_stream(seen.id, 7)

    def answer(self, peer: Peer, seen: Seen) -> None:
        action = self.actions[id(peer), seen.id]
        if action == "internal":
            peer.h2.reset_stream(seen.id, 2)
        elif action == "ok":
            if self.delay:
                self.server.loop.call_later(self.delay, self.ok, peer, seen)
            else:
                self.ok(peer, seen)

    def ok(self, peer: Peer, seen: Seen) -> None:
        with self.lock:  # recorded first: the client may read the answer before we go on
            self.answered.append(seen.fields[":path"].rsplit("/", 1)[1])
        peer.respond(seen.id, 200, [(b"apns-id", f"id-{seen.id}".encode())])
        peer.flush()

    def received(self) -> Counter[str]:
        with self.lock:
            return Counter(self.seen)

    def delivered(self) -> list[str]:
        with self.lock:
            return list(self.answered)

    def cancelled(self) -> list[str]:
        from h2 import events as h2e

        return [peer.streams[e.stream_id].fields[":path"].rsplit("/", 1)[1]
                for peer in self.server.peers for e in peer.of(h2e.StreamReset)
                if e.error_code == 8]

    def connections(self) -> int:
        return len(self.server.peers)

    def check(self) -> None:
        assert self.server.errors == [], f"h2 rejected what we sent: {self.server.errors!r}"


class NodeScripted:
    def __init__(self, node_serve: Callable[..., NodeH2Server], rules: dict[str, list[str]],
                 max_streams: int = 100, delay: float = 0.0, goaway_after: int = 0) -> None:
        self.node = node_serve(settings={"maxConcurrentStreams": max_streams}, rules=rules,
                               delayMs=int(delay * 1000), goawayAfter=goaway_after)
        self.port = self.node.port

    def received(self) -> Counter[str]:
        self.node.sync()
        return Counter([e["headers"][":path"].rsplit("/", 1)[1] for e in self.node.of("request")]
                       + [e["path"].rsplit("/", 1)[1] for e in self.node.of("refused")])

    def delivered(self) -> list[str]:
        self.node.sync()
        return self.node.delivered()

    def cancelled(self) -> list[str]:
        self.node.sync()
        paths = {(e["session"], e["stream"]): e["headers"][":path"].rsplit("/", 1)[1]
                 for e in self.node.of("request")}
        return [paths[e["session"], e["stream"]] for e in self.node.of("close")
                if e["rstCode"] == 8]

    def connections(self) -> int:
        self.node.sync()
        return len(self.node.of("session"))

    def check(self) -> None:
        assert self.node.proc.poll() is None, "the node server died"


@pytest.fixture(params=["h2", "node"])
def scripted(request: pytest.FixtureRequest, serve: Callable[..., H2Server]
             ) -> Iterator[Callable[..., Any]]:
    """scripted(rules={token: [actions]}, max_streams=, delay=, goaway_after=): an h2 or a Node
    server (skipped where node is not installed); our client's connections closed after."""
    if request.param == "node":
        node_serve = request.getfixturevalue("node_serve")
        yield lambda **kw: NodeScripted(node_serve, **kw)
    else:
        yield lambda **kw: H2Scripted(serve, **kw)
    client.close()


def app_for(server: Scripted, ca_pem: Path) -> App:
    return App(APP_ID, "ABCDEFGHIJ", "TEAM123456", Path("unused.p8"),
               f"https://127.0.0.1:{server.port}", ca_file=ca_pem)


def test_refused_streams_are_resent_until_the_bound_and_a_reset_after_reading_never(
        scripted: Callable[..., Any], ca_pem: Path) -> None:
    server = scripted(rules={device(0): ["refuse", "refuse", "ok"], device(1): ["internal"],
                             device(2): ["refuse"]})
    results = send_many(app_for(server, ca_pem), requests(6), token=TOKEN, timeout=3.0)
    assert [(r.status, r.unknown) for r in results] == [
        (200, False), (0, True), (0, False), (200, False), (200, False), (200, False)]
    assert results[1].error == "stream reset by the server: INTERNAL_ERROR"
    assert results[2].error == (f"stream reset by the server: REFUSED_STREAM (sent "
                                f"{RESEND_ATTEMPTS} times, every one refused unprocessed)")
    received = server.received()
    assert received[device(0)] == 3  # refused twice, then answered
    assert received[device(1)] == 1  # read, then reset: maybe delivered, never sent again
    assert received[device(2)] == RESEND_ATTEMPTS
    assert sorted(server.delivered()) == [device(i) for i in (0, 3, 4, 5)]
    assert server.connections() == 1  # refusals do not cost the connection
    server.check()


def test_a_refusal_that_goes_on_is_given_up_within_about_one_timeout(
        scripted: Callable[..., Any], ca_pem: Path) -> None:
    server = scripted(rules={device(0): ["refuse"]})
    started = time.monotonic()
    (result,) = send_many(app_for(server, ca_pem), requests(1), token=TOKEN, timeout=0.1)
    assert time.monotonic() - started < 1.0
    assert (result.status, result.unknown) == (0, False)
    assert 2 <= server.received()[device(0)] < RESEND_ATTEMPTS  # the time bound came first
    server.check()


@pytest.mark.parametrize(("goaway_after", "delivered"), [(5, 20), (2, 2 * RESEND_ATTEMPTS)])
def test_requests_past_a_goaway_are_resent_on_new_connections_until_the_bound(
        scripted: Callable[..., Any], ca_pem: Path, goaway_after: int, delivered: int) -> None:
    """Each connection processes ``goaway_after`` requests and says GOAWAY naming the last; the
    rest, never processed, go again on the next connection: all of them (5 a connection), or
    as many as RESEND_ATTEMPTS connections take (2 a connection), each delivered once."""
    server = scripted(rules={}, goaway_after=goaway_after)
    results = send_many(app_for(server, ca_pem), requests(20), token=TOKEN, timeout=3.0)
    assert sum(r.ok for r in results) == delivered
    failed = [r for r in results if not r.ok]
    assert all(r.status == 0 and not r.unknown and "GOAWAY" in (r.error or "") for r in failed)
    assert Counter(server.delivered()) == Counter({r.device_token: 1 for r in results if r.ok})
    assert server.connections() == min(RESEND_ATTEMPTS, 20 // goaway_after)
    server.check()


def test_a_late_stream_is_cancelled_alone_and_its_outcome_is_unknown(
        scripted: Callable[..., Any], ca_pem: Path) -> None:
    server = scripted(rules={device(3): ["silent"]})
    app = app_for(server, ca_pem)
    started = time.monotonic()
    results = send_many(app, requests(30), token=TOKEN, timeout=0.5)
    assert 0.5 <= time.monotonic() - started < 1.5
    late = results.pop(3)
    assert (late.status, late.unknown, late.error) == (0, True, "timeout: no answer in 0.5s")
    assert all(r.ok for r in results)
    wait_for(server.cancelled, what="our RST_STREAM CANCEL")
    assert server.cancelled() == [device(3)]  # RST_STREAM CANCEL, on that stream only
    assert send_many(app, requests(5), token=TOKEN, timeout=0.5)[4].ok
    assert server.connections() == 1  # the connection was kept
    assert server.received()[device(3)] == 2  # once per call: never resent within one
    server.check()


def test_a_requests_timeout_runs_from_when_it_gets_a_stream(
        scripted: Callable[..., Any], ca_pem: Path) -> None:
    """4 streams, 0.15 s an answer: 24 requests take about 0.9 s, twice their 0.4 s timeout,
    and every one is answered."""
    server = scripted(rules={}, max_streams=4, delay=0.15)
    started = time.monotonic()
    results = send_many(app_for(server, ca_pem), requests(24), token=TOKEN, timeout=0.4)
    assert time.monotonic() - started >= 0.85
    assert [r.status for r in results] == [200] * 24
    assert sorted(server.delivered()) == [device(i) for i in range(24)]
    server.check()

"""Our lean HTTP/2 client (tasks/push/apns/http2.py) against nghttp2, through Node's built-in
``http2`` module (node_h2_server.js, started per test by node_server.py): a second server
implementation beside test_http2_conformance.py's ``h2``, mirroring its tests where nghttp2 has
something of its own to say (its HPACK encoder with Huffman and indexing, its stream limits and
automatic flow control, its PINGs). Skipped where ``node`` is not installed.

Client-level behaviours (resends, late streams, timeouts from stream assignment) run against
both servers in test_resend.py.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from tasks.push.apns.apps import App
from tasks.push.apns.client import PushRequest, _Blocks
from tasks.push.apns.frames import Failure, Outcome, Response
from tasks.push.apns.http2 import Http2Connection
from tests.push.apns.node_server import NodeH2Server

APP_ID = "com.example.photos"
TOKEN = "eyJhbGciOiJFUzI1NiIsImtpZCI6IkFCQ0RFRkdISUoifQ.eyJpc3MiOiJURUFNIn0.c2lnbmF0dXJl"
BLOCKS = _Blocks()

NodeServe = Callable[..., NodeH2Server]


def run(body: object) -> None:
    asyncio.run(asyncio.wait_for(body, 15))  # type: ignore[arg-type]


async def connected(server: NodeH2Server, tls: ssl.SSLContext) -> Http2Connection:
    return await Http2Connection.open("127.0.0.1", server.port, tls, 5.0)


def device(i: int) -> str:
    return f"{i:064x}"


def app(server: NodeH2Server) -> App:
    return App(APP_ID, "ABCDEFGHIJ", "TEAM123456", Path("unused.p8"),
               f"https://127.0.0.1:{server.port}")


def post(conn: Http2Connection, server: NodeH2Server, req: PushRequest,
         timeout: float = 5.0) -> asyncio.Future[Outcome]:
    return conn.submit(BLOCKS(app(server), TOKEN, req), req.payload, timeout)


def without_date(outcome: Outcome) -> Outcome:
    """Node adds a date header to every answer; APNs' own headers are what we compare."""
    if isinstance(outcome, Response):
        return outcome._replace(headers={k: v for k, v in outcome.headers.items()
                                         if k != "date"})
    return outcome


def answer_for(i: int) -> Response:
    """What node_h2_server.js's varied(i) answers: values that repeat and vary, so nghttp2's
    encoder indexes, refers back and evicts; one never-indexed header."""
    headers = {"apns-id": str(uuid.UUID(int=i)), "apns-unique-id": str(uuid.UUID(int=i % 37
                                                                                  + 10_000)),
               "x-shard": ("east", "west", "north")[i % 3], "x-trace": f"t{i % 5}"}
    if i % 5 == 0:
        body = {"reason": "Unregistered", "timestamp": 1_700_000_000_000 + i}
        return Response(410, headers, json.dumps(body, separators=(",", ":")).encode())
    if i % 7 == 0:
        return Response(400, {**headers, "retry-after": str(i % 11)}, b'{"reason":"BadTopic"}')
    return Response(200, headers, b"")


def test_requests_arrive_exactly_and_nghttp2s_answers_decode(
        node_serve: NodeServe, tls: ssl.SSLContext) -> None:
    server = node_serve(answer="varied")
    n = 300

    def request(i: int) -> PushRequest:
        data = json.dumps({"aps": {"alert": "x" * (i % 50)}, "i": i}).encode()
        return PushRequest(device(i), data, priority=(5, 10, None)[i % 3],
                           expiration=1_700_000_000 + i if i % 4 == 0 else None,
                           collapse_id=f"c{i % 9}" if i % 2 else None,
                           apns_id=str(uuid.UUID(int=i + 99)) if i % 6 == 0 else None)

    async def body() -> None:
        conn = await connected(server, tls)
        futures = []
        for start in range(0, n, 75):
            futures += [post(conn, server, request(i)) for i in range(start, start + 75)]
            conn.flush()
        outcomes = [without_date(o) for o in await asyncio.gather(*futures)]
        assert outcomes == [answer_for(i) for i in range(n)]
        assert conn.decoder.table  # nghttp2 indexed, and we followed its table
        conn.close("test over")

    run(body())
    server.sync()
    seen = server.requests()
    assert len(seen) == n and len(server.of("session")) == 1
    for event in seen:
        i = int(event["headers"][":path"].rsplit("/", 1)[1], 16)
        req = request(i)
        expected = {":method": "POST", ":scheme": "https",
                    ":authority": f"127.0.0.1:{server.port}",
                    ":path": f"/3/device/{req.device_token}",
                    "authorization": f"bearer {TOKEN}", "apns-topic": APP_ID,
                    "apns-push-type": "alert", "content-length": str(len(req.payload))}
        for name, value in (("apns-priority", req.priority), ("apns-expiration", req.expiration),
                            ("apns-collapse-id", req.collapse_id), ("apns-id", req.apns_id)):
            if value is not None:
                expected[name] = str(value)
        assert event["headers"] == expected
        assert event["sensitive"] == ["authorization"]  # sent never-indexed, and only that
        assert NodeH2Server.body(event) == req.payload


def test_max_concurrent_streams_is_respected(node_serve: NodeServe, tls: ssl.SSLContext) -> None:
    server = node_serve(settings={"maxConcurrentStreams": 3}, delayMs=20)

    async def body() -> None:
        conn = await connected(server, tls)
        assert conn.max_streams == 3
        futures = [post(conn, server, PushRequest(device(i), b"{}")) for i in range(30)]
        conn.flush()
        outcomes = await asyncio.gather(*futures)
        assert [o.status for o in outcomes if isinstance(o, Response)] == [200] * 30
        conn.close("test over")

    run(body())
    server.sync()
    assert max(e["open"] for e in server.requests()) == 3
    assert not server.of("refused")


@pytest.mark.parametrize("window", [100, 1000])
def test_bodies_respect_nghttp2s_small_stream_windows(
        node_serve: NodeServe, tls: ssl.SSLContext, window: int) -> None:
    server = node_serve(settings={"initialWindowSize": window})
    bodies = [bytes([i]) * 4096 for i in range(20)]

    async def body() -> None:
        conn = await connected(server, tls)
        futures = [post(conn, server, PushRequest(device(i), data))
                   for i, data in enumerate(bodies)]
        conn.flush()
        outcomes = await asyncio.gather(*futures)
        assert all(isinstance(o, Response) and o.status == 200 for o in outcomes), outcomes
        conn.close("test over")

    run(body())
    server.sync()
    got = {int(e["headers"][":path"].rsplit("/", 1)[1], 16): NodeH2Server.body(e)
           for e in server.requests()}
    assert got == dict(enumerate(bodies))


def test_header_blocks_over_the_frame_size_go_out_with_continuation(
        node_serve: NodeServe, tls: ssl.SSLContext) -> None:
    server = node_serve()
    long = "a" * 40000

    async def body() -> None:
        conn = await connected(server, tls)
        block = BLOCKS(app(server), TOKEN, PushRequest(device(1), b"{}")) + \
            b"\x00\x06x-long" + bytes((0x7F,)) + _int(len(long) - 127) + long.encode()
        first = conn.submit(block, b"{}", 5.0)
        second = post(conn, server, PushRequest(device(2), b"{}"))
        conn.flush()
        assert [without_date(o) for o in await asyncio.gather(first, second)] == [
            Response(200, {"apns-id": "id-1"}, b""), Response(200, {"apns-id": "id-3"}, b"")]
        conn.close("test over")

    run(body())
    server.sync()
    assert server.requests()[0]["headers"]["x-long"] == long


def _int(value: int) -> bytes:
    out = bytearray()
    while value >= 128:
        out.append(value & 127 | 128)
        value >>= 7
    out.append(value)
    return bytes(out)


def test_nghttp2s_ping_is_acknowledged(node_serve: NodeServe, tls: ssl.SSLContext) -> None:
    server = node_serve()

    async def body() -> None:
        conn = await connected(server, tls)
        server.command("ping")
        await asyncio.to_thread(server.wait, lambda: server.of("pinged"), "the PING's ACK")
        assert server.of("pinged") == [{"ev": "pinged", "session": 1, "ok": True}]
        answer = post(conn, server, PushRequest(device(1), b"{}"))
        conn.flush()
        assert without_date(await answer) == Response(200, {"apns-id": "id-1"}, b"")
        conn.close("test over")

    run(body())


def test_a_frozen_server_is_judged_dead_after_a_whole_timeout(
        node_serve: NodeServe, tls: ssl.SSLContext) -> None:
    """Node's whole process stops (no frame read or written: our PING goes unanswered too):
    the connection is dropped once a stream has waited its whole timeout in that silence; its
    streams fail as timeouts of unknown outcome, the requests waiting for a stream unsent."""
    server = node_serve(settings={"maxConcurrentStreams": 3})

    async def body() -> None:
        conn = await connected(server, tls)
        warm = post(conn, server, PushRequest(device(0), b"{}"))
        conn.flush()
        assert isinstance(await warm, Response)
        server.command("freeze", ms=1000)
        await asyncio.to_thread(server.wait, lambda: server.of("frozen"), "the freeze")
        started = time.monotonic()
        futures = [post(conn, server, PushRequest(device(i), b"{}"), timeout=0.4)
                   for i in range(1, 6)]
        conn.flush()
        outcomes = await asyncio.gather(*futures)
        assert 0.4 <= time.monotonic() - started < 1.2
        error = "timeout: no answer in 0.4s and the connection silent"
        assert outcomes == 3 * [Failure(error, timeout=True)] + \
            2 * [Failure(f"not sent: {error}", unprocessed=True, timeout=True)]
        assert not conn.usable(300)

    run(body())

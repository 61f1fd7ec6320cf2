"""Conformance of our lean HTTP/2 client (tasks/push/apns/http2.py) and its HPACK codec
(tasks/push/apns/hpack_codec.py) against independent implementations: the ``h2`` package's state
machine on the server side of a real TLS connection, and the ``hpack`` package's Encoder/Decoder.

The server is h2_server.py's: h2's state machine on a real TLS connection, scripted per test.

The client side runs in a fresh event loop per test (``asyncio.run``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import ssl
import string
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import hpack
import hpack.hpack
import pytest
from h2 import events as h2e
from h2.settings import SettingCodes
from hpack import HeaderTuple, NeverIndexedHeaderTuple
from hyperframe.frame import DataFrame, HeadersFrame

from tasks.push.apns import frames
from tasks.push.apns.apps import App
from tasks.push.apns.client import PushRequest, _Blocks
from tasks.push.apns.frames import (
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    HEADERS,
    PING,
    SETTINGS,
    WINDOW_UPDATE,
    Failure,
    Response,
)
from tasks.push.apns.hpack_codec import Decoder, HpackError, indexed, integer, literal
from tasks.push.apns.http2 import Http2Connection
from tests.push.apns.h2_server import MAX_STREAMS, H2Server, Peer, Seen, ok

WINDOW = SettingCodes.INITIAL_WINDOW_SIZE
FRAME_SIZE = SettingCodes.MAX_FRAME_SIZE
TABLE_SIZE = SettingCodes.HEADER_TABLE_SIZE
APP_ID = "com.example.photos"
TOKEN = "eyJhbGciOiJFUzI1NiIsImtpZCI6IkFCQ0RFRkdISUoifQ.eyJpc3MiOiJURUFNIn0.c2lnbmF0dXJl"


# -- the client side --------------------------------------------------------------------------


def run(body: Awaitable[None]) -> None:
    """The test's client side, in a fresh event loop."""
    asyncio.run(asyncio.wait_for(body, 10))


@contextlib.asynccontextmanager
async def connected(server: H2Server, tls: ssl.SSLContext) -> AsyncIterator[Http2Connection]:
    conn = await Http2Connection.open("127.0.0.1", server.port, tls, 5.0)
    try:
        yield conn
    finally:
        conn.close("test over")
        await asyncio.sleep(0.01)


async def until(predicate: Callable[[], object], what: str = "condition",
                timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


def app(server: H2Server) -> App:
    return App(APP_ID, "ABCDEFGHIJ", "TEAM123456", Path("unused.p8"),
               f"https://127.0.0.1:{server.port}")


BLOCKS = _Blocks()


def device(i: int) -> str:
    return f"{i:064x}"


def post(conn: Http2Connection, server: H2Server, i: int, payload: bytes = b'{"aps":{}}',
         timeout: float = 5.0, **kw: Any) -> asyncio.Future[frames.Outcome]:
    """Submit a push as client.py's _Blocks encodes it."""
    block = BLOCKS(app(server), TOKEN, PushRequest(device(i), payload, **kw))
    return conn.submit(block, payload, timeout)


def block_with(server: H2Server, i: int, length: int, *extra: tuple[str, str]) -> bytes:
    """A request block built by hand from hpack_codec's literals."""
    return b"".join([indexed(":method", "POST"), indexed(":scheme", "https"),
                     literal(":authority", f"127.0.0.1:{server.port}"),
                     literal(":path", f"/3/device/{device(i)}"),
                     literal("content-length", str(length)),
                     *(literal(name, value) for name, value in extra)])




def index_of(seen: Seen) -> int:
    return int(seen.fields[":path"].rsplit("/", 1)[1], 16)


def clean(server: H2Server) -> None:
    assert server.errors == [], f"h2 rejected what we sent: {server.errors!r}"


# -- 1. requests and responses ------------------------------------------------------------------


def answer_for(i: int) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Varying and repeating values, so h2's encoder indexes, refers back and evicts."""
    headers = [(b"apns-id", str(uuid.UUID(int=i)).encode()),
               (b"apns-unique-id", str(uuid.UUID(int=i % 37 + 10_000)).encode()),
               (b"x-shard", (b"east", b"west", b"north")[i % 3]),
               NeverIndexedHeaderTuple(b"x-trace", f"t{i % 5}".encode())]
    if i % 5 == 0:
        return 410, headers, json.dumps({"reason": "Unregistered",
                                         "timestamp": 1_700_000_000_000 + i}).encode()
    if i % 7 == 0:
        return 400, [*headers, (b"retry-after", str(i % 11).encode())], b'{"reason":"BadTopic"}'
    return 200, headers, b""


def test_requests_arrive_exactly_and_responses_decode_through_dynamic_table_evictions(
        serve: Callable[..., H2Server], tls: ssl.SSLContext) -> None:
    server = serve(answer=lambda peer, seen: peer.respond(seen.id, *answer_for(index_of(seen))))
    n = 300

    def request(i: int) -> PushRequest:
        data = json.dumps({"aps": {"alert": "x" * (i % 50)}, "i": i}).encode()
        return PushRequest(device(i), data, priority=(5, 10, None)[i % 3],
                           expiration=1_700_000_000 + i if i % 4 == 0 else None,
                           collapse_id=f"c{i % 9}" if i % 2 else None,
                           apns_id=str(uuid.UUID(int=i + 99)) if i % 6 == 0 else None)

    async def body() -> None:
        async with connected(server, tls) as conn:
            futures = []
            for start in range(0, n, 75):  # bursts, a flush each, as send_all does
                for i in range(start, start + 75):
                    req = request(i)
                    futures.append(conn.submit(BLOCKS(app(server), TOKEN, req), req.payload, 5.0))
                conn.flush()
            outcomes = await asyncio.gather(*futures)
            for i, outcome in enumerate(outcomes):
                status, headers, data = answer_for(i)
                assert outcome == Response(status, {k.decode(): v.decode() for k, v in headers},
                                           data), i
            peer = server.peer
            # Our HPACK decoder's dynamic table is h2's encoder's, entry for entry, and it did
            # evict (300 distinct apns-ids went through a 4096-byte table).
            entries = peer.h2.encoder.header_table.dynamic_entries
            table = [(k.decode(), v.decode()) for k, v in entries]
            assert list(conn.decoder.table) == table
            assert conn.decoder.size == sum(32 + len(k) + len(v) for k, v in table) <= 4096
            assert 0 < len(table) < 100
            # Every request, exactly as _Blocks encoded it, as h2 decoded it.
            assert sorted(peer.streams) == list(range(1, 2 * n, 2))
            assert peer.max_open <= 100  # h2's default limit, which it enforces itself
            for seen in peer.streams.values():
                req = request(index_of(seen))
                expected = [(b":method", b"POST"), (b":scheme", b"https"),
                            (b":authority", f"127.0.0.1:{server.port}".encode()),
                            (b":path", f"/3/device/{req.device_token}".encode()),
                            (b"authorization", f"bearer {TOKEN}".encode()),
                            (b"apns-topic", APP_ID.encode()), (b"apns-push-type", b"alert"),
                            (b"content-length", str(len(req.payload)).encode())]
                for name, value in (("apns-priority", req.priority),
                                    ("apns-expiration", req.expiration),
                                    ("apns-collapse-id", req.collapse_id),
                                    ("apns-id", req.apns_id)):
                    if value is not None:
                        expected.append((name.encode(), str(value).encode()))
                assert [tuple(h) for h in seen.headers] == expected
                # The provider token went out never-indexed (RFC 7541 7.1.3), nothing else did.
                assert [isinstance(h, NeverIndexedHeaderTuple) for h in seen.headers] == \
                    [name == b"authorization" for name, _ in expected]
                assert seen.ended and bytes(seen.body) == req.payload
            # The connection's start, as h2 saw it: our SETTINGS (push off, 1 MiB stream
            # windows), then a connection WINDOW_UPDATE to 16 MiB; its SETTINGS acknowledged.
            assert [(f.kind, f.flags, f.stream) for f in peer.frames_in[:2]] == \
                [(SETTINGS, 0, 0), (WINDOW_UPDATE, 0, 0)]
            (changed,) = peer.of(h2e.RemoteSettingsChanged)
            assert {k: v.new_value for k, v in changed.changed_settings.items()} == \
                {SettingCodes.ENABLE_PUSH: 0, WINDOW: 1 << 20}
            assert [(e.stream_id, e.delta) for e in peer.of(h2e.WindowUpdated)] == \
                [(0, (1 << 24) - 65535)]
            assert len(peer.of(h2e.SettingsAcknowledged)) == 1
            assert conn.usable(300)
        clean(server)

    run(body())


def test_interim_response_trailers_padding_priority_and_unknown_frames_are_understood(
        serve: Callable[..., H2Server], tls: ssl.SSLContext) -> None:
    def answer(peer: Peer, seen: Seen) -> None:
        if seen.id == 1:  # an unknown frame type and PRIORITY (both to be ignored), then
            # 103, the answer, a body and trailers through h2
            peer.raw(bytes.fromhex("000003 fa 00 00000001") + b"ext"
                     + bytes.fromhex("000005 02 00 00000001 00000000 10"))
            peer.h2.send_headers(1, [(b":status", b"103"), (b"link", b"</a>; rel=preload")])
            peer.h2.send_headers(1, [(b":status", b"200"), (b"apns-id", b"one")])
            peer.h2.send_data(1, b"abc")
            peer.h2.send_headers(1, [(b"x-trailer", b"t")], end_stream=True)
        elif seen.id == 3:  # PADDED and PRIORITY on HEADERS, PADDED on DATA: raw frames
            block = peer.h2.encoder.encode([(b":status", b"200"), (b"apns-id", b"two")])
            peer.raw(HeadersFrame(3, data=block, flags={"END_HEADERS", "PADDED", "PRIORITY"},
                                    pad_length=9, depends_on=1, stream_weight=200).serialize()
                       + DataFrame(3, data=b"padded", flags={"END_STREAM", "PADDED"},
                                   pad_length=20).serialize())
        else:
            ok(peer, seen)

    server = serve(answer=answer)

    async def body() -> None:
        async with connected(server, tls) as conn:
            one, two = post(conn, server, 1), post(conn, server, 2)
            conn.flush()
            assert await one == Response(200, {"apns-id": "one"}, b"abc")
            assert await two == Response(200, {"apns-id": "two"}, b"padded")
            three = post(conn, server, 3)  # HPACK still in step after the hand-made block
            conn.flush()
            assert await three == Response(200, {"apns-id": "id-5"}, b"")
        clean(server)

    run(body())


def test_answers_that_are_not_apns_are_reset_and_the_connection_goes_on(
        serve: Callable[..., H2Server], tls: ssl.SSLContext) -> None:
    def answer(peer: Peer, seen: Seen) -> None:
        if seen.id == 1:  # a body over 64 KiB
            peer.h2.send_headers(1, [(b":status", b"200")])
            for _ in range(5):
                peer.h2.send_data(1, bytes(16384))
            peer.h2.send_data(1, b"", end_stream=True)
        elif seen.id == 3:  # no :status (raw: h2 would not send it)
            peer.raw(HeadersFrame(3, data=peer.h2.encoder.encode([(b"apns-id", b"x")]),
                                  flags={"END_HEADERS", "END_STREAM"}).serialize())
        else:
            ok(peer, seen)

    server = serve(answer=answer)

    async def body() -> None:
        async with connected(server, tls) as conn:
            futures = [post(conn, server, i) for i in range(2)]
            conn.flush()
            assert await asyncio.gather(*futures) == [
                Failure("response body over 64 KiB: not APNs"),
                Failure("response without a :status")]
            peer = server.peer
            # Our RST_STREAMs, as frames: h2 ends stream 1 with its last DATA and so reports no
            # event for a reset that comes after.
            def resets() -> list[tuple[int, bytes]]:
                return [(f.stream, f.payload) for f in peer.frames_in
                        if f.kind == frames.RST_STREAM]

            await until(lambda: len(resets()) == 2, "our RST_STREAMs")
            assert resets() == [(1, b"\0\0\0\x08"), (3, b"\0\0\0\x01")]  # CANCEL, PROTOCOL_ERROR
            assert [(e.stream_id, e.error_code) for e in peer.of(h2e.StreamReset)] == [(3, 1)]
            again = post(conn, server, 2)
            conn.flush()
            assert await again == Response(200, {"apns-id": "id-5"}, b"")
        clean(server)

    run(body())


# -- 2. SETTINGS_MAX_CONCURRENT_STREAMS ---------------------------------------------------------


def test_max_concurrent_streams_is_respected_and_a_raise_is_used(
        serve: Callable[..., H2Server], tls: ssl.SSLContext) -> None:
    holding = threading.Event()
    held: list[int] = []

    def answer(peer: Peer, seen: Seen) -> None:
        if holding.is_set():
            held.append(seen.id)
        else:
            peer.respond(seen.id, 200, [(b"apns-id", f"id-{seen.id}".encode())], delay=0.002)

    server = serve(settings={MAX_STREAMS: 1}, answer=answer)

    async def body() -> None:
        async with connected(server, tls) as conn:
            assert conn.max_streams == 1
            futures = [post(conn, server, i) for i in range(20)]
            conn.flush()
            outcomes = await asyncio.gather(*futures)
            assert outcomes == [Response(200, {"apns-id": f"id-{2 * i + 1}"}, b"")
                                for i in range(20)]
            peer = server.peer
            assert peer.max_open == 1  # h2 would have raised TooManyStreamsError past it
            assert sorted(peer.streams) == list(range(1, 41, 2))

            holding.set()
            futures = [post(conn, server, i) for i in range(20, 40)]
            conn.flush()
            await until(lambda: len(held) == 1, "the first held request")
            await asyncio.sleep(0.05)
            assert len(held) == 1 and len(conn.waiting) == 19
            await server.do(lambda p: p.settings({MAX_STREAMS: 8}))
            await until(lambda: len(held) == 8, "8 streams at once")
            await asyncio.sleep(0.05)
            assert len(held) == 8 and len(conn.waiting) == 12 and conn.max_streams == 8
            assert peer.max_open == 8
            holding.clear()
            await server.do(lambda p: [ok(p, p.streams[sid]) for sid in held])
            outcomes = await asyncio.gather(*futures)
            assert outcomes == [Response(200, {"apns-id": f"id-{2 * i + 1}"}, b"")
                                for i in range(20, 40)]
            assert peer.max_open == 8
            assert len(peer.of(h2e.SettingsAcknowledged)) == 2  # the first SETTINGS and the raise
        clean(server)

    run(body())


# -- 3. flow control ----------------------------------------------------------------------------


def payload(i: int, size: int = 4096) -> bytes:
    return random.Random(i).randbytes(size)


def test_bodies_respect_stream_and_connection_windows(
        serve: Callable[..., H2Server], tls: ssl.SSLContext) -> None:
    """Stream windows of 100 bytes, and the connection's 65535 handed back only at the end:
    20 bodies of 4096 bytes (81920 in all) trickle out exactly as far as the windows allow."""
    server = serve(settings={WINDOW: 100}, auto_window=False)

    async def body() -> None:
        async with connected(server, tls) as conn:
            futures = [conn.submit(block_with(server, i, 4096), payload(i), 5.0)
                       for i in range(20)]
            conn.flush()
            peer = server.peer
            await until(lambda: len(peer.streams) == 20 and peer.bodies()[1] == 100,
                        "20 requests, 100 bytes of the first body")
            await asyncio.sleep(0.05)
            assert all(n <= 100 for n in peer.bodies().values()), peer.bodies()
            # Each stream's window to 4100, none for the connection yet.
            await server.do(lambda p: [p.h2.increment_flow_control_window(4000, stream_id=sid)
                                       for sid in sorted(p.streams)])
            await until(lambda: sum(peer.bodies().values()) == 65535, "the connection window used")
            await asyncio.sleep(0.05)
            assert sum(peer.bodies().values()) == 65535  # all of it, not a byte more
            assert not any(f.done() for f in futures[15:])  # the 16th has 4095 bytes out
            await server.do(lambda p: p.h2.increment_flow_control_window(20 * 4096 - 65535))
            outcomes = await asyncio.gather(*futures)
            assert outcomes == [Response(200, {"apns-id": f"id-{2 * i + 1}"}, b"")
                                for i in range(20)]
            assert {sid: bytes(s.body) for sid, s in peer.streams.items()} == \
                {2 * i + 1: payload(i) for i in range(20)}
            data = [f for f in peer.frames_in if f.kind == DATA]
            assert data[0].stream == 1 and len(data[0].payload) == 100
            assert sum(len(f.payload) for f in data) == 20 * 4096
            assert sorted(f.stream for f in data if f.flags & END_STREAM) == list(range(1, 41, 2))
        clean(server)

    run(body())


def test_a_raised_initial_window_setting_moves_open_streams_windows(
        serve: Callable[..., H2Server], tls: ssl.SSLContext) -> None:
    """RFC 9113 6.9.2: SETTINGS_INITIAL_WINDOW_SIZE changes the windows of open streams."""
    server = serve(settings={WINDOW: 100}, auto_window=False)

    async def body() -> None:
        async with connected(server, tls) as conn:
            futures = [conn.submit(block_with(server, i, 4096), payload(i), 5.0)
                       for i in range(3)]
            conn.flush()
            peer = server.peer
            await until(lambda: len(peer.streams) == 3 and peer.bodies()[1] == 100,
                        "3 requests, 100 bytes of the first body")
            await server.do(lambda p: p.settings({WINDOW: 4096}))  # no WINDOW_UPDATE at all
            outcomes = await asyncio.gather(*futures)
            assert outcomes == [Response(200, {"apns-id": f"id-{2 * i + 1}"}, b"")
                                for i in range(3)]
            assert [bytes(s.body) for s in peer.streams.values()] == [payload(i) for i in range(3)]
            assert not [f for f in peer.frames_out if f.kind == WINDOW_UPDATE]
        clean(server)

    run(body())


def test_a_refused_stream_whose_body_waits_for_window_does_not_stall_the_next(
        serve: Callable[..., H2Server], tls: ssl.SSLContext) -> None:
    """Stream 1 takes its 100-byte window, stream 3 waits behind it; the server refuses stream 1
    at once. Stream 3 still has its own 100 bytes of window (and gets more as it uses them):
    nothing about stream 1 may hold it up."""
    def on_request(peer: Peer, seen: Seen) -> None:
        if seen.id == 1:
            peer.h2.reset_stream(1, 7)  # REFUSED_STREAM

    server = serve(settings={WINDOW: 100}, on_request=on_request)

    async def body() -> None:
        async with connected(server, tls) as conn:
            first = conn.submit(block_with(server, 1, 4096), payload(1), 1.0)
            second = conn.submit(block_with(server, 2, 4096), payload(2), 1.0)
            conn.flush()
            assert await first == Failure("stream reset by the server: REFUSED_STREAM",
                                          unprocessed=True)
            assert await second == Response(200, {"apns-id": "id-3"}, b"")
            assert bytes(server.peer.streams[3].body) == payload(2)
        clean(server)

    run(body())


def test_an_answer_before_the_whole_body_closes_the_stream_at_the_server(
        serve: Callable[..., H2Server], tls: ssl.SSLContext) -> None:
    """The server answers (413) as soon as it has a request's headers, while most of its body
    waits for window. A stream counts against SETTINGS_MAX_CONCURRENT_STREAMS until both sides
    have closed it (RFC 9113 5.1.2), so we must end it (send the rest, or RST_STREAM it, 8.1)
    before the next stream can start within a limit of 1."""
    def on_request(peer: Peer, seen: Seen) -> None:
        if seen.id == 1:
            peer.respond(1, 413, [(b"apns-id", b"big")], b'{"reason":"PayloadTooLarge"}')

    server = serve(settings={MAX_STREAMS: 1, WINDOW: 100}, on_request=on_request,
                   answer=lambda peer, seen: ok(peer, seen) if seen.id != 1 else None)

    async def body() -> None:
        async with connected(server, tls) as conn:
            first = conn.submit(block_with(server, 1, 4096), payload(1), 1.0)
            second = post(conn, server, 2, timeout=1.0)
            conn.flush()
            assert await first == Response(413, {"apns-id": "big"},
                                           b'{"reason":"PayloadTooLarge"}')
            assert await second == Response(200, {"apns-id": "id-3"}, b"")
            peer = server.peer
            closed = {e.stream_id for e in peer.of(h2e.StreamReset)} | \
                {e.stream_id for e in peer.of(h2e.StreamEnded)}
            assert 1 in closed
        clean(server)

    run(body())


# -- 4, 5. GOAWAY and RST_STREAM ---------------------------------------------------------------


def test_goaway_fails_later_streams_unprocessed_and_lets_earlier_ones_finish(
        serve: Callable[..., H2Server], tls: ssl.SSLContext) -> None:
    server = serve(settings={MAX_STREAMS: 4}, answer=None)

    async def body() -> None:
        async with connected(server, tls) as conn:
            futures = [post(conn, server, i) for i in range(6)]  # streams 1-7, two queued
            conn.flush()
            peer = server.peer
            await until(lambda: sum(s.ended for s in peer.streams.values()) == 4, "4 requests")
            await server.do(lambda p: p.goaway(3, 0, b"bye"))
            await until(lambda: futures[2].done(), "stream 5 failed")
            assert [f.result() for f in futures[2:]] == [
                Failure("not processed: GOAWAY NO_ERROR bye", unprocessed=True),
                Failure("not processed: GOAWAY NO_ERROR bye", unprocessed=True),
                Failure("not sent: GOAWAY NO_ERROR bye", unprocessed=True),
                Failure("not sent: GOAWAY NO_ERROR bye", unprocessed=True)]
            assert not futures[0].done() and not futures[1].done()
            assert not conn.usable(300)
            assert await post(conn, server, 9) == Failure("not sent: connection draining",
                                                          unprocessed=True)
            await server.do(lambda p: [ok(p, p.streams[1]), ok(p, p.streams[3])])
            assert await futures[0] == Response(200, {"apns-id": "id-1"}, b"")
            assert await futures[1] == Response(200, {"apns-id": "id-3"}, b"")
            # Drained: we close with our own GOAWAY, which h2 understands.
            await until(lambda: peer.of(h2e.ConnectionTerminated), "our GOAWAY")
            (goaway,) = peer.of(h2e.ConnectionTerminated)
            assert (goaway.error_code, goaway.last_stream_id) == (0, 0)
            assert conn.closed == "connection drained"
            assert await post(conn, server, 10) == Failure("not sent: connection drained",
                                                           unprocessed=True)
            assert sorted(peer.streams) == [1, 3, 5, 7]
        clean(server)

    run(body())


def test_rst_stream_refused_is_unprocessed_and_other_codes_are_not(
        serve: Callable[..., H2Server], tls: ssl.SSLContext) -> None:
    codes = {1: 7, 3: 2, 5: 0xFF}  # REFUSED_STREAM, INTERNAL_ERROR, an unknown code

    def answer(peer: Peer, seen: Seen) -> None:
        if seen.id in codes:
            peer.h2.reset_stream(seen.id, codes[seen.id])
        else:
            ok(peer, seen)

    server = serve(answer=answer)

    async def body() -> None:
        async with connected(server, tls) as conn:
            futures = [post(conn, server, i) for i in range(4)]
            conn.flush()
            assert await asyncio.gather(*futures) == [
                Failure("stream reset by the server: REFUSED_STREAM", unprocessed=True),
                Failure("stream reset by the server: INTERNAL_ERROR", unprocessed=False),
                Failure("stream reset by the server: 255", unprocessed=False),
                Response(200, {"apns-id": "id-7"}, b"")]
            assert conn.usable(300)
            again = post(conn, server, 4)
            conn.flush()
            assert await again == Response(200, {"apns-id": "id-9"}, b"")
        clean(server)

    run(body())


def test_stream_ids_used_up_drain_the_connection(
        serve: Callable[..., H2Server], tls: ssl.SSLContext) -> None:
    server = serve()

    async def body() -> None:
        async with connected(server, tls) as conn:
            conn.next_id = frames.MAX_STREAM_ID - 2
            futures = [post(conn, server, i) for i in range(3)]
            conn.flush()
            assert await asyncio.gather(*futures) == [
                Response(200, {"apns-id": f"id-{2**31 - 3}"}, b""),
                Response(200, {"apns-id": f"id-{2**31 - 1}"}, b""),
                Failure("not sent: connection draining", unprocessed=True)]
            await until(lambda: server.peer.of(h2e.ConnectionTerminated), "our GOAWAY")
            assert conn.closed == "connection drained" and not conn.usable(300)
        clean(server)

    run(body())


# -- 6. PING ------------------------------------------------------------------------------------


def test_ping_is_acknowledged_with_its_data(
        serve: Callable[..., H2Server], tls: ssl.SSLContext) -> None:
    server = serve()

    async def body() -> None:
        async with connected(server, tls) as conn:
            await server.do(lambda p: p.h2.ping(b"\x00ping\xff\x01\x02"))
            peer = server.peer
            await until(lambda: peer.of(h2e.PingAckReceived), "PING ACK")
            (ack,) = peer.of(h2e.PingAckReceived)
            assert ack.ping_data == b"\x00ping\xff\x01\x02"
            assert [(f.kind, f.flags, f.stream, f.payload) for f in peer.frames_in
                    if f.kind == PING] == [(PING, 1, 0, b"\x00ping\xff\x01\x02")]
            answer = post(conn, server, 1)
            conn.flush()
            assert await answer == Response(200, {"apns-id": "id-1"}, b"")
        clean(server)

    run(body())


# -- 7. header blocks over the frame size, frame sizes -----------------------------------------


def test_header_blocks_over_the_frame_size_use_continuation_both_ways(
        serve: Callable[..., H2Server], tls: ssl.SSLContext) -> None:
    rng = random.Random(7)
    big = "".join(rng.choices(string.ascii_letters + string.digits, k=40000))
    long = "a" * 40000

    def answer(peer: Peer, seen: Seen) -> None:
        if seen.id == 1:
            peer.respond(1, 200, [(b"apns-id", b"one"), (b"x-big", big.encode())])
        else:
            ok(peer, seen)

    server = serve(answer=answer)

    async def body() -> None:
        async with connected(server, tls) as conn:
            block = block_with(server, 1, 2, ("x-long", long))
            first = conn.submit(block, b"{}", 5.0)
            conn.flush()
            assert await first == Response(200, {"apns-id": "one", "x-big": big}, b"")
            second = post(conn, server, 2)
            conn.flush()
            assert await second == Response(200, {"apns-id": "id-3"}, b"")
            empty = block_with(server, 3, 0, ("x-long", long))  # no body: END_STREAM on HEADERS
            third = conn.submit(empty, b"", 5.0)
            conn.flush()
            assert await third == Response(200, {"apns-id": "id-5"}, b"")
            peer = server.peer
            assert [(f.kind, f.flags, len(f.payload)) for f in peer.frames_in if f.stream == 5] \
                == [(HEADERS, END_STREAM, 16384), (CONTINUATION, 0, 16384),
                    (CONTINUATION, END_HEADERS, len(empty) - 32768)]
            assert peer.streams[5].ended and peer.streams[5].fields["x-long"] == long
            assert peer.streams[1].fields["x-long"] == long
            assert bytes(peer.streams[1].body) == b"{}"
            ours = [f for f in peer.frames_in if f.stream == 1]
            sent = block  # h2's table size is our encoder's (4096): no size update opens it
            assert [(f.kind, f.flags, len(f.payload)) for f in ours] == [
                (HEADERS, 0, 16384), (CONTINUATION, 0, 16384),
                (CONTINUATION, END_HEADERS, len(sent) - 32768), (DATA, END_STREAM, 2)]
            assert b"".join(f.payload for f in ours[:3]) == sent
            theirs = [(f.kind, f.flags) for f in peer.frames_out if f.stream == 1]
            assert theirs[0] == (HEADERS, END_STREAM) and theirs[-1] == (CONTINUATION, END_HEADERS)
            assert {kind for kind, _ in theirs[1:]} == {CONTINUATION}
        clean(server)

    run(body())


@pytest.mark.parametrize("max_frame", [16384, 32768])
def test_frames_follow_the_servers_max_frame_size(
        serve: Callable[..., H2Server], tls: ssl.SSLContext, max_frame: int) -> None:
    server = serve(settings={FRAME_SIZE: max_frame})
    data = payload(0, 40000)

    async def body() -> None:
        async with connected(server, tls) as conn:
            block = block_with(server, 0, len(data), ("x-long", "b" * 30000))
            answer = conn.submit(block, data, 5.0)
            conn.flush()
            assert await answer == Response(200, {"apns-id": "id-1"}, b"")
            peer = server.peer
            assert bytes(peer.streams[1].body) == data
            ours = [(f.kind, f.flags, len(f.payload)) for f in peer.frames_in if f.stream == 1]
            sent = len(block)
            if max_frame == 16384:
                assert ours == [(HEADERS, 0, 16384), (CONTINUATION, END_HEADERS, sent - 16384),
                                (DATA, 0, 16384), (DATA, 0, 16384), (DATA, END_STREAM, 7232)]
            else:
                assert ours == [(HEADERS, END_HEADERS, sent), (DATA, 0, 32768),
                                (DATA, END_STREAM, 7232)]
        clean(server)

    run(body())


def test_header_table_size_setting_is_answered_with_a_size_update(
        serve: Callable[..., H2Server], tls: ssl.SSLContext) -> None:
    """RFC 7541 4.2: a new SETTINGS_HEADER_TABLE_SIZE is acknowledged by a dynamic table size
    update opening the next header block (and only that one)."""
    server = serve(settings={TABLE_SIZE: 0})

    async def body() -> None:
        async with connected(server, tls) as conn:
            for i in range(2):
                answer = post(conn, server, i)
                conn.flush()
                assert await answer == Response(200, {"apns-id": f"id-{2 * i + 1}"}, b"")
            await server.do(lambda p: p.settings({TABLE_SIZE: 1024}))
            for i in range(2, 4):
                answer = post(conn, server, i)
                conn.flush()
                assert await answer == Response(200, {"apns-id": f"id-{2 * i + 1}"}, b"")
            peer = server.peer
            heads = [f.payload[:3] for f in peer.frames_in if f.kind == HEADERS]
            assert heads == [b"\x20\x83\x87", b"\x83\x87\x01", b"\x3f\xe1\x07", b"\x83\x87\x01"]
            assert [s.table_size for s in peer.streams.values()] == [0, 0, 1024, 1024]
        clean(server)

    run(body())


# -- 8, 9, 10. silence, closes, ALPN ------------------------------------------------------------


def test_a_late_stream_is_cancelled_alone_and_the_connection_kept(
        serve: Callable[..., H2Server], tls: ssl.SSLContext) -> None:
    """One request left unanswered past its deadline while the others are answered: that stream
    alone is reset (RST_STREAM CANCEL) and reported as a timeout of unknown outcome (the server
    read it); the others and the connection carry on."""
    server = serve(answer=lambda peer, seen: None if seen.id == 3 else ok(peer, seen))

    async def body() -> None:
        async with connected(server, tls) as conn:
            started = time.monotonic()
            futures = [post(conn, server, i, timeout=0.3) for i in range(5)]
            conn.flush()
            outcomes = await asyncio.gather(*futures)
            assert 0.3 <= time.monotonic() - started < 1.0
            assert outcomes[1] == Failure("timeout: no answer in 0.3s", timeout=True)
            assert not outcomes[1].unprocessed  # it left: the outcome is unknown
            assert [o for i, o in enumerate(outcomes) if i != 1] == [
                Response(200, {"apns-id": f"id-{sid}"}, b"") for sid in (1, 5, 7, 9)]
            peer = server.peer
            await until(lambda: peer.of(h2e.StreamReset), "our RST_STREAM")
            assert [(e.stream_id, e.error_code) for e in peer.of(h2e.StreamReset)] == [(3, 8)]
            assert conn.usable(300) and not peer.lost
            again = post(conn, server, 9, timeout=0.3)
            conn.flush()
            assert await again == Response(200, {"apns-id": "id-11"}, b"")
        clean(server)

    run(body())


def test_a_server_answering_nothing_but_pings_keeps_the_connection(
        serve: Callable[..., H2Server], tls: ssl.SSLContext) -> None:
    """No request answered at all, yet the server acknowledges our PING (sent after half a
    timeout of silence): every stream is cancelled alone, the connection lives on."""
    server = serve(settings={MAX_STREAMS: 3}, answer=None)

    async def body() -> None:
        async with connected(server, tls) as conn:
            futures = [post(conn, server, i, timeout=0.4) for i in range(5)]
            conn.flush()
            outcomes = await asyncio.gather(*futures)
            assert outcomes == 5 * [Failure("timeout: no answer in 0.4s", timeout=True)]
            peer = server.peer
            pings = [f.payload for f in peer.frames_in if f.kind == PING]
            assert pings and set(pings) == {b"farm-ok?"}  # about one per half timeout of quiet
            await until(lambda: len(peer.of(h2e.StreamReset)) == 5, "5 RST_STREAMs")
            assert {e.error_code for e in peer.of(h2e.StreamReset)} == {8}  # CANCEL
            assert conn.usable(300) and not peer.lost
        clean(server)

    run(body())


def test_a_silent_connection_is_dropped_after_a_whole_timeout(
        serve: Callable[..., H2Server], tls: ssl.SSLContext) -> None:
    """Nothing at all arrives any more (not even the acknowledgement of our PING): once a stream
    has waited its whole timeout in that silence, the connection is judged dead; its open
    streams fail as timeouts of unknown outcome, the requests waiting for a stream unsent."""
    server = serve(settings={MAX_STREAMS: 3}, answer=None)

    async def body() -> None:
        async with connected(server, tls) as conn:
            await server.do(Peer.mute)
            started = time.monotonic()
            futures = [post(conn, server, i, timeout=0.3) for i in range(5)]
            conn.flush()
            outcomes = await asyncio.gather(*futures)
            assert 0.3 <= time.monotonic() - started < 1.0
            error = "timeout: no answer in 0.3s and the connection silent"
            assert outcomes == 3 * [Failure(error, timeout=True)] + \
                2 * [Failure(f"not sent: {error}", unprocessed=True, timeout=True)]
            assert conn.closed == error and not conn.usable(300)
            peer = server.peer
            await until(lambda: peer.lost, "the connection dropped")
            assert [f.payload for f in peer.frames_in if f.kind == PING] == [b"farm-ok?"]
            assert sum(s.ended for s in peer.streams.values()) == 3
        clean(server)

    run(body())


def test_a_requests_timeout_runs_from_when_it_gets_a_stream(
        serve: Callable[..., H2Server], tls: ssl.SSLContext) -> None:
    """A slow server (0.2 s an answer) with 2 streams: 10 requests take 1 s, over three times
    their 0.3 s timeout, and every one is answered: waiting for a stream does not count."""
    server = serve(settings={MAX_STREAMS: 2}, answer=lambda peer, seen: peer.respond(
        seen.id, 200, [(b"apns-id", f"id-{seen.id}".encode())], delay=0.2))

    async def body() -> None:
        async with connected(server, tls) as conn:
            started = time.monotonic()
            futures = [post(conn, server, i, timeout=0.3) for i in range(10)]
            conn.flush()
            outcomes = await asyncio.gather(*futures)
            assert time.monotonic() - started >= 1.0
            assert outcomes == [Response(200, {"apns-id": f"id-{2 * i + 1}"}, b"")
                                for i in range(10)]
            assert server.peer.max_open == 2
        clean(server)

    run(body())


def test_requests_waiting_for_a_stream_give_up_after_their_timeout(
        serve: Callable[..., H2Server], tls: ssl.SSLContext) -> None:
    """A server allowing no streams at all (SETTINGS_MAX_CONCURRENT_STREAMS 0) never frees one:
    the queue is failed, unsent, after its timeout rather than waiting forever."""
    server = serve(settings={MAX_STREAMS: 0})

    async def body() -> None:
        async with connected(server, tls) as conn:
            started = time.monotonic()
            futures = [post(conn, server, i, timeout=0.3) for i in range(3)]
            conn.flush()
            outcomes = await asyncio.gather(*futures)
            assert 0.3 <= time.monotonic() - started < 1.0
            assert outcomes == 3 * [Failure("not sent: no stream free in 0.3s", unprocessed=True,
                                            timeout=True)]
            assert server.peer.streams == {}
        clean(server)

    run(body())


@pytest.mark.parametrize("how", ["close", "abort"])
def test_the_server_dropping_the_connection_fails_open_streams(
        serve: Callable[..., H2Server], tls: ssl.SSLContext, how: str) -> None:
    server = serve(settings={MAX_STREAMS: 2}, answer=None)

    async def body() -> None:
        async with connected(server, tls) as conn:
            futures = [post(conn, server, i) for i in range(3)]
            conn.flush()
            await until(lambda: sum(s.ended for s in server.peer.streams.values()) == 2,
                        "2 requests")
            await server.do(Peer.close if how == "close" else Peer.abort)
            outcomes = await asyncio.gather(*futures)
            reason = outcomes[0].error
            if how == "close":  # TLS close_notify, then FIN
                assert reason == "connection closed by the server"
            else:
                assert reason.startswith("connection lost") or \
                    reason == "connection closed by the server"
            assert outcomes == [Failure(reason), Failure(reason),
                                Failure(f"not sent: {reason}", unprocessed=True)]
            assert not conn.usable(300)
            assert await post(conn, server, 9) == Failure(f"not sent: {reason}",
                                                          unprocessed=True)
        clean(server)

    run(body())


def test_open_fails_when_the_server_closes_before_its_settings(
        serve: Callable[..., H2Server], tls: ssl.SSLContext) -> None:
    server = serve(on_connect="close")

    async def body() -> None:
        with pytest.raises(ConnectionError, match=r"connection (closed by the server|lost)"):
            await Http2Connection.open("127.0.0.1", server.port, tls, 5.0)

    run(body())


def test_open_times_out_when_the_server_never_sends_settings(
        serve: Callable[..., H2Server], tls: ssl.SSLContext) -> None:
    server = serve(on_connect="silent")

    async def body() -> None:
        with pytest.raises(TimeoutError):
            await Http2Connection.open("127.0.0.1", server.port, tls, 0.3)
        # ... and does not leave the connection it gave up on open.
        await until(lambda: server.peer.lost, "the abandoned connection closed", timeout=1.0)

    run(body())


@pytest.mark.parametrize("offered", [["h2"], ["h2", "http/1.1"]])
def test_open_refuses_a_server_without_http2(
        serve: Callable[..., H2Server], ca_pem: Path, offered: list[str]) -> None:
    server = serve(alpn=("http/1.1",))
    context = ssl.create_default_context(cafile=str(ca_pem))
    context.set_alpn_protocols(offered)

    async def body() -> None:
        with pytest.raises(ConnectionError, match="HTTP/2"):
            await Http2Connection.open("127.0.0.1", server.port, context, 5.0)

    run(body())


@pytest.mark.parametrize(("raw", "code"), [
    (bytes.fromhex("000001 01 05 00000001") + b"\x80", "COMPRESSION_ERROR"),  # index 0
    (bytes.fromhex("000004 05 04 00000001 00000002"), "PROTOCOL_ERROR"),  # PUSH_PROMISE
    (bytes.fromhex("000001 09 04 00000001") + b"\x88", "PROTOCOL_ERROR"),  # bare CONTINUATION
    (bytes.fromhex("004001 00 01 00000001") + bytes(16385), "FRAME_SIZE_ERROR"),  # > 16384
])
def test_a_server_breaking_the_protocol_gets_goaway_with_the_error(
        serve: Callable[..., H2Server], tls: ssl.SSLContext, raw: bytes, code: str) -> None:
    server = serve(answer=lambda peer, seen: peer.raw(raw))

    async def body() -> None:
        async with connected(server, tls) as conn:
            answer = post(conn, server, 1)
            conn.flush()
            outcome = await answer
            assert isinstance(outcome, Failure) and not outcome.unprocessed
            assert outcome.error.startswith(f"connection error: {code}: "), outcome
            peer = server.peer
            await until(lambda: peer.of(h2e.ConnectionTerminated), "our GOAWAY")
            (goaway,) = peer.of(h2e.ConnectionTerminated)
            assert frames.ERROR_NAMES[goaway.error_code] == code
            assert not conn.usable(300)

    run(body())


# -- 11. hpack_codec against the hpack package --------------------------------------------------


def test_integer_encoding_matches_rfc7541_and_hpack() -> None:
    assert integer(10, 5) == b"\x0a"  # C.1.1
    assert integer(1337, 5) == b"\x1f\x9a\x0a"  # C.1.2
    assert integer(42, 8) == b"\x2a"  # C.1.3
    assert integer(31, 5) == b"\x1f\x00"  # exactly the prefix's maximum
    assert integer(3, 7, 0x80) == b"\x83"
    rng = random.Random(0)
    for _ in range(2000):
        bits, value = rng.randint(1, 8), rng.choice([rng.randint(0, 300), rng.randint(0, 2**28)])
        encoded = integer(value, bits)
        assert encoded == bytes(hpack.hpack.encode_integer(value, bits))
        assert Decoder._integer(encoded, 0, bits) == (value, len(encoded))


def test_rfc7541_request_examples_decode_with_their_dynamic_table() -> None:
    get = [(":method", "GET"), (":scheme", "http"), (":path", "/"),
           (":authority", "www.example.com")]
    third = [(":method", "GET"), (":scheme", "https"), (":path", "/index.html"),
             (":authority", "www.example.com"), ("custom-key", "custom-value")]
    for blocks in (["828684410f7777772e6578616d706c652e636f6d",  # C.3: no Huffman
                    "828684be58086e6f2d6361636865",
                    "828785bf400a637573746f6d2d6b65790c637573746f6d2d76616c7565"],
                   ["828684418cf1e3c2e5f23a6ba0ab90f4ff",  # C.4: Huffman
                    "828684be5886a8eb10649cbf",
                    "828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf"]):
        decoder = Decoder()
        assert decoder.decode(bytes.fromhex(blocks[0])) == get
        assert decoder.decode(bytes.fromhex(blocks[1])) == [*get, ("cache-control", "no-cache")]
        assert decoder.decode(bytes.fromhex(blocks[2])) == third
        assert list(decoder.table) == [("custom-key", "custom-value"),
                                       ("cache-control", "no-cache"),
                                       (":authority", "www.example.com")]
        assert decoder.size == 164


@pytest.mark.parametrize("huffman", [True, False])
@pytest.mark.parametrize("seed", range(4))
def test_decoder_follows_hpack_encoder(huffman: bool, seed: int) -> None:
    rng = random.Random(seed)
    static = [name for name, _ in hpack.table.HeaderTable.STATIC_TABLE]
    names = [n.decode() for n in static] + [f"x-custom-{i}" for i in range(12)]
    values = ["", "0", "gzip", "no-cache"] + [f"value-{i}-" + "z" * rng.randint(0, 60)
                                             for i in range(40)]
    encoder, decoder = hpack.Encoder(), Decoder()
    for n in range(300):
        if rng.random() < 0.08:  # table size changes: one, or two between blocks
            for _ in range(rng.randint(1, 2)):
                # Always a new size: hpack's Encoder fails to signal a size set twice in a row.
                encoder.header_table_size = rng.choice(
                    [s for s in (0, 64, 256, 1024, 4096) if s != encoder.header_table_size])
        headers: list[Any] = []
        for _ in range(rng.randint(0, 12)):
            name = rng.choice(names)
            value = rng.choice(values) if rng.random() < 0.7 else \
                "".join(rng.choices(string.printable.strip(), k=rng.randint(0, 300)))
            headers.append(NeverIndexedHeaderTuple(name, value) if rng.random() < 0.1
                           else (name, value))
        decoded = decoder.decode(encoder.encode(headers, huffman=huffman))
        assert decoded == [(name, value) for name, value in headers], n
        assert list(decoder.table) == [(k.decode(), v.decode())
                                       for k, v in encoder.header_table.dynamic_entries]
        assert decoder.max_size == encoder.header_table.maxsize
        assert decoder.size == encoder.header_table._current_size


def test_our_literals_decode_with_hpack_as_never_indexed_when_sensitive() -> None:
    block = (indexed(":method", "POST") + indexed(":scheme", "https")
             + literal(":authority", "api.push.apple.com") + literal(":path", "/3/device/ab")
             + literal("authorization", "bearer tok", sensitive=True)
             + literal("apns-topic", "com.example.photos")
             + literal("x-not-static", "1", sensitive=True) + literal("x-bytes", b"\xe9t\xe9")
             + literal("content-length", "1234"))
    expected = [(":method", "POST"), (":scheme", "https"), (":authority", "api.push.apple.com"),
                (":path", "/3/device/ab"), ("authorization", "bearer tok"),
                ("apns-topic", "com.example.photos"), ("x-not-static", "1"),
                ("x-bytes", "\xe9t\xe9"), ("content-length", "1234")]
    theirs = hpack.Decoder()
    decoded = theirs.decode(block, raw=True)
    assert [(k.decode(), v.decode("latin-1")) for k, v in decoded] == expected
    assert [type(h) for h in decoded] == [HeaderTuple] * 4 + [NeverIndexedHeaderTuple] + \
        [HeaderTuple, NeverIndexedHeaderTuple, HeaderTuple, HeaderTuple]
    assert not theirs.header_table.dynamic_entries  # nothing indexed: blocks can be reused
    assert Decoder().decode(block) == expected
    assert literal("content-length", "7") == b"\x0f\x0d\x017"  # static name index 28


@pytest.mark.parametrize("block", [
    b"\x80",  # indexed field 0
    b"\xbf",  # index 62: the dynamic table is empty
    b"\xff\x80\x80\x80\x80\x80\x01",  # an integer past 2^28 bits
    b"\x1f",  # a name index cut short
    b"\x00\x05ab",  # a name string running past the block
    b"\x04\x83ab",  # a value string running past the block
    b"\x00\x81\xff\x01a",  # Huffman padding longer than 7 bits
    b"\x3f\xe1\x3f",  # a table size update over 4096 (SETTINGS_HEADER_TABLE_SIZE)
    b"\x04",  # a literal without its value
])
def test_malformed_blocks_raise_hpack_error(block: bytes) -> None:
    with pytest.raises(HpackError):
        Decoder().decode(block)

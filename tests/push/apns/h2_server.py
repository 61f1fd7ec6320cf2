"""A scriptable HTTP/2 server over TLS for the client's conformance tests: an asyncio TLS server
in a background thread (its own loop, a trustme certificate, ALPN h2), each connection driven by
the ``h2`` package's ``H2Connection``, an implementation independent of ours. h2 raises on any
frame the client gets wrong (stream limits, flow-control windows, header blocks,
content-length), and such an error fails the test.

Per test it is scripted with: its first SETTINGS, how each request is answered (``answer``, when
the request has ended; ``on_request``, when its headers arrive), whether it hands back
flow-control window by itself, and actions run on its loop (``server.do``): SETTINGS, PING,
GOAWAY, RST_STREAM, WINDOW_UPDATE, raw frames, closing, and ``mute``: from then on nothing at all
is written (not even h2's PING acknowledgements), a server gone silent with the TCP connection up.
It records what it received: h2's events, the requests (headers as h2 decoded them, bodies) and
every frame in both directions.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trustme
from h2 import events as h2e
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.settings import SettingCodes, Settings
from hpack import HeaderTuple
from hyperframe.frame import GoAwayFrame

MAX_STREAMS = SettingCodes.MAX_CONCURRENT_STREAMS


@dataclass
class Seen:
    """One request as the h2 server got it."""

    id: int
    headers: list[HeaderTuple]  # as h2 decoded them (NeverIndexedHeaderTuple when never indexed)
    table_size: int  # the size h2's HPACK decoder was at once these headers were decoded
    body: bytearray = field(default_factory=bytearray)
    ended: bool = False

    @property
    def fields(self) -> dict[str, str]:
        return {name.decode(): value.decode() for name, value in self.headers}


@dataclass
class Frame:
    kind: int
    flags: int
    stream: int
    payload: bytes


def parse_frames(buffer: bytearray, out: list[Frame]) -> None:
    while len(buffer) >= 9:
        length = int.from_bytes(buffer[:3], "big")
        if len(buffer) < 9 + length:
            return
        out.append(Frame(buffer[3], buffer[4], int.from_bytes(buffer[5:9], "big") & 0x7FFFFFFF,
                         bytes(buffer[9:9 + length])))
        del buffer[:9 + length]


Answer = Callable[["Peer", "Seen"], None]


def ok(peer: Peer, seen: Seen) -> None:
    """The default answer, as APNs gives it: 200 with an apns-id."""
    peer.respond(seen.id, 200, [(b"apns-id", f"id-{seen.id}".encode())])


class Peer(asyncio.Protocol):
    """One server connection, driven by h2."""

    def __init__(self, server: H2Server) -> None:
        self.server = server
        self.h2 = H2Connection(config=H2Configuration(client_side=False, header_encoding=None))
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, Seen] = {}
        self.events: list[h2e.Event] = []
        self.frames_in: list[Frame] = []
        self.frames_out: list[Frame] = []
        self._in, self._out = bytearray(), bytearray()
        self.preface = 24  # bytes of the client preface still to skip in frames_in
        self.alpn: str | None = None
        self.max_open = 0  # most streams h2 counted open at once
        self.lost = False
        self.muted = False  # write nothing from now on

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.server.peers.append(self)
        self.alpn = transport.get_extra_info("ssl_object").selected_alpn_protocol()
        if self.alpn != "h2":
            return  # an HTTP/1.1 server would wait for a request line
        if self.server.on_connect == "close":
            transport.close()
            return
        if self.server.on_connect == "silent":
            return
        self.h2.local_settings = Settings(client=False, initial_values={
            MAX_STREAMS: 100, SettingCodes.MAX_HEADER_LIST_SIZE: 65536, **self.server.settings})
        # What h2 derives from its settings at construction and on their ACK.
        self.h2.max_inbound_frame_size = self.h2.local_settings.max_frame_size
        self.h2.decoder.max_allowed_table_size = self.h2.local_settings.header_table_size
        self.h2.initiate_connection()
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True

    def data_received(self, data: bytes) -> None:
        if self.server.on_connect != "h2":
            return
        self._in += data
        skip = min(self.preface, len(self._in))
        del self._in[:skip]
        self.preface -= skip
        parse_frames(self._in, self.frames_in)
        try:
            for event in self.h2.receive_data(data):
                self.handle(event)
        except Exception as exc:  # h2 found us breaking the protocol (or a script failed)
            self.server.errors.append(exc)
            self.flush()
            self.close()
            return
        self.flush()

    def handle(self, event: h2e.Event) -> None:
        self.events.append(event)
        if isinstance(event, h2e.RequestReceived):
            assert event.stream_id is not None and event.headers is not None
            seen = Seen(event.stream_id, list(event.headers), self.h2.decoder.header_table_size)
            self.streams[seen.id] = seen
            self.max_open = max(self.max_open, self.h2.open_inbound_streams)
            if self.server.on_request is not None:
                self.server.on_request(self, seen)
        elif isinstance(event, h2e.DataReceived):
            assert event.stream_id is not None and event.data is not None
            self.streams[event.stream_id].body += event.data
            if self.server.auto_window:
                self.h2.acknowledge_received_data(event.flow_controlled_length or 0,
                                                  event.stream_id)
        elif isinstance(event, h2e.StreamEnded):
            assert event.stream_id is not None
            seen = self.streams[event.stream_id]
            seen.ended = True
            if self.server.answer is not None:
                self.server.answer(self, seen)

    # -- actions (on the server's loop) -----------------------------------------------------------

    def respond(self, stream_id: int, status: int = 200, headers: Any = (), body: bytes = b"",
                delay: float = 0.0) -> None:
        if delay:
            self.server.loop.call_later(delay, self.respond, stream_id, status, headers, body)
            return
        if self.lost:
            return
        self.h2.send_headers(stream_id, [(b":status", str(status).encode()), *headers],
                             end_stream=not body)
        if body:
            self.h2.send_data(stream_id, body, end_stream=True)
        self.flush()

    def settings(self, values: dict[int, int]) -> None:
        self.h2.update_settings(values)

    def goaway(self, last_stream_id: int, code: int = 0, debug: bytes = b"") -> None:
        """GOAWAY written past h2, which would refuse to answer the streams it leaves open."""
        self.raw(GoAwayFrame(0, last_stream_id=last_stream_id, error_code=code,
                             additional_data=debug).serialize())

    def raw(self, data: bytes) -> None:
        """Frames past h2, after what h2 has queued (its HPACK state must stay in order)."""
        self.flush()
        self.write(data)

    def mute(self) -> None:
        self.muted = True

    def write(self, data: bytes) -> None:
        if self.muted:
            return
        self._out += data
        parse_frames(self._out, self.frames_out)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data:
            self.write(data)

    def close(self) -> None:
        assert self.transport is not None
        self.transport.close()

    def abort(self) -> None:
        assert self.transport is not None
        self.transport.abort()

    # -- records ----------------------------------------------------------------------------------

    def of(self, kind: type[h2e.Event]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]

    def bodies(self) -> dict[int, int]:
        return {sid: len(seen.body) for sid, seen in self.streams.items()}


class H2Server:
    def __init__(self, ca: trustme.CA, *, settings: dict[int, int] | None = None,
                 answer: Answer | None = ok, on_request: Answer | None = None,
                 auto_window: bool = True, alpn: tuple[str, ...] = ("h2",),
                 on_connect: str = "h2") -> None:
        self.settings = settings or {}
        self.answer, self.on_request, self.auto_window = answer, on_request, auto_window
        self.on_connect = on_connect  # "h2"; "close": at once; "silent": no SETTINGS, ever
        self.peers: list[Peer] = []
        self.errors: list[Exception] = []
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.set_alpn_protocols(list(alpn))
        ca.issue_cert("127.0.0.1").configure_cert(context)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="h2-server",
                                       daemon=True)
        self.thread.start()
        self.listener = asyncio.run_coroutine_threadsafe(self.loop.create_server(
            lambda: Peer(self), "127.0.0.1", 0, ssl=context), self.loop).result(5)
        self.port: int = self.listener.sockets[0].getsockname()[1]

    @property
    def peer(self) -> Peer:
        assert len(self.peers) == 1, f"{len(self.peers)} connections"
        return self.peers[0]

    async def do(self, action: Callable[[Peer], Any]) -> Any:
        """Run ``action(peer)`` on the server's loop, then send what h2 has to send."""
        peer = self.peer

        async def run() -> Any:
            result = action(peer)
            peer.flush()
            return result

        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(run(), self.loop))

    def stop(self) -> None:
        async def shut() -> None:
            self.listener.close()
            for peer in self.peers:
                if peer.transport is not None:
                    peer.transport.abort()
            await asyncio.sleep(0.01)

        asyncio.run_coroutine_threadsafe(shut(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()

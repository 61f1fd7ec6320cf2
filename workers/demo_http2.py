"""The server side of HTTP/2, just what APNs' provider API needs of one: the demo's APNs stand-in
(workers/demo_apns.py) answers each request through it. Built on the farm's own framing
(tasks/push/apns/frames.py, hpack_codec.py): the demo needs no dev dependency.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from tasks.push.apns import frames as f
from tasks.push.apns.hpack_codec import Decoder, HpackError, literal

MAX_STREAMS = 1000  # advertised, as Apple does
MAX_BODY = 4096  # bytes kept of a request's body (Apple's payload limit for alerts)

# (pseudo-headers, headers, body) -> (status, response headers, response body)
Answer = Callable[[dict[str, str], dict[str, str], bytes], tuple[int, list[tuple[str, str]], bytes]]


class H2Connection(asyncio.Protocol):
    """One client's HTTP/2 connection: just what APNs' provider API needs of a server. Answers
    are a few dozen bytes, so only the client's receive windows (large) could hold them back."""

    def __init__(self, answer: Answer, registry: set[H2Connection]) -> None:
        self.answer, self.registry = answer, registry
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.preface = False
        self.decoder = Decoder()
        self.streams: dict[int, tuple[list[tuple[str, str]], bytearray]] = {}
        self.block: tuple[int, int, bytearray] | None = None  # a header block being continued
        self.last_stream = 0
        self.out: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        tls = transport.get_extra_info("ssl_object")
        if tls is None or tls.selected_alpn_protocol() != "h2":
            transport.abort()
            return
        self.registry.add(self)
        streams = f.SETTINGS_MAX_CONCURRENT_STREAMS.to_bytes(2, "big")
        transport.write(f.frame(f.SETTINGS, 0, 0, streams + MAX_STREAMS.to_bytes(4, "big")))

    def connection_lost(self, exc: Exception | None) -> None:
        self.registry.discard(self)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buffer += data
        if not self.preface:
            if len(self.buffer) < len(f.PREFACE):
                return
            if self.buffer[:len(f.PREFACE)] != f.PREFACE:
                self.transport.abort()
                return
            del self.buffer[:len(f.PREFACE)]
            self.preface = True
        try:
            received, used = f.split_frames(self.buffer)
            del self.buffer[:used]
            for kind, flags, stream_id, payload in received:
                self._frame(kind, flags, stream_id, payload)
        except (f.ProtocolViolation, HpackError) as exc:
            code = exc.code if isinstance(exc, f.ProtocolViolation) else f.COMPRESSION_ERROR
            self.out.append(f.frame(f.GOAWAY, 0, 0, self.last_stream.to_bytes(4, "big")
                                    + code.to_bytes(4, "big")))
            self.transport.write(b"".join(self.out))
            self.transport.close()
            return
        if self.out:
            self.transport.write(b"".join(self.out))
            self.out.clear()

    def _frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self.block is not None and kind != f.CONTINUATION:
            raise f.ProtocolViolation(f.PROTOCOL_ERROR, "header block interrupted")
        if kind in (f.HEADERS, f.CONTINUATION):
            if kind == f.HEADERS:
                self.block = (stream_id, flags, bytearray(f.header_fragment(flags, payload)))
            elif self.block is None or self.block[0] != stream_id:
                raise f.ProtocolViolation(f.PROTOCOL_ERROR, "stray CONTINUATION")
            else:
                self.block[2].extend(payload)
            if flags & f.END_HEADERS:
                self._headers()
        elif kind == f.DATA:
            if payload:  # give the connection's window back (each stream's is never spent)
                self.out.append(f.frame(f.WINDOW_UPDATE, 0, 0, len(payload).to_bytes(4, "big")))
            if flags & f.PADDED:
                payload = payload[1:len(payload) - payload[0]]
            stream = self.streams.get(stream_id)
            if stream is not None:
                if len(stream[1]) <= MAX_BODY:
                    stream[1].extend(payload)
                if flags & f.END_STREAM:
                    self._answer(stream_id)
        elif kind in (f.SETTINGS, f.PING) and not flags & f.ACK:
            self.out.append(f.frame(kind, f.ACK, 0, payload if kind == f.PING else b""))
        elif kind == f.RST_STREAM:
            self.streams.pop(stream_id, None)
        elif kind == f.GOAWAY and self.transport is not None:
            self.transport.close()

    def _headers(self) -> None:
        assert self.block is not None
        stream_id, flags, block = self.block
        self.block = None
        headers = self.decoder.decode(bytes(block))  # always: keeps HPACK's table in step
        if stream_id not in self.streams:
            if stream_id % 2 == 0 or stream_id <= self.last_stream:
                raise f.ProtocolViolation(f.PROTOCOL_ERROR, f"bad stream id {stream_id}")
            self.last_stream = stream_id
            self.streams[stream_id] = (headers, bytearray())
        if flags & f.END_STREAM:
            self._answer(stream_id)

    def _answer(self, stream_id: int) -> None:
        headers, body = self.streams.pop(stream_id)
        pseudo = {k: v for k, v in headers if k.startswith(":")}
        regular = {k: v for k, v in headers if not k.startswith(":")}
        status, out, answer = self.answer(pseudo, regular, bytes(body))
        block = literal(":status", str(status)) + b"".join(literal(k, v) for k, v in out)
        ends = 0 if answer else f.END_STREAM
        self.out.append(f.frame(f.HEADERS, f.END_HEADERS | ends, stream_id, block))
        if answer:
            self.out.append(f.frame(f.DATA, f.END_STREAM, stream_id, answer))

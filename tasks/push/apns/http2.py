"""A lean HTTP/2 client connection (RFC 9113) on asyncio, made for APNs' provider API.
Long because it is one state machine, a connection's frames out and in; framing is frames.py.

Why not h2/httpx: measured on this farm's machines, httpx spends ~2.5 ms of CPU per request and
h2's state machine alone most of a 100 us budget (10,000 pushes/s from one process). APNs needs
little of HTTP/2: POSTs of at most 5 KB, answers of a few dozen bytes, no server push, no
priorities. So this keeps only that: frames are built and parsed here, request header blocks are
pre-encoded literals (hpack_codec), every frame a burst of requests makes goes out in one TLS
write, and per-stream timeouts are one periodic sweep rather than a timer per request.

What it does keep, because a real server holds it to them: the server's SETTINGS (concurrent
streams, which Apple raises after the first request; window and frame sizes; header table size),
flow control both ways, PING, GOAWAY (streams past its last id are reported unprocessed, so they
can be sent again safely), RST_STREAM (REFUSED_STREAM likewise), stream-id exhaustion, and a
connection error for a peer that breaks the protocol.

Timeouts. A request's timeout runs from when it gets a stream: time spent waiting for one (the
server's SETTINGS_MAX_CONCURRENT_STREAMS reached) does not count. A stream unanswered past its
deadline is cancelled alone (RST_STREAM CANCEL) and reported as a timeout whose outcome is
unknown: the server may have acted on it. The connection is judged dead only when nothing at all
(no frame of any kind) arrived on it for a stream's whole timeout; a PING sent after half a
timeout of silence makes a live but slow server prove itself. Then every open stream fails
(outcome unknown) and every waiting request fails unsent. Requests still waiting for a stream
give up, unsent, when none has come free for a whole timeout (a server whose limit stays at 0).

Everything runs on one event loop; nothing here is thread-safe. Requests are handed over without
awaiting (``send``, with a callback; ``submit``, with a future) and always end in exactly one
outcome, a ``Response`` or a ``Failure``, never an exception, so a batch of thousands costs no
exception handling.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Callable

from tasks.push.apns import hpack_codec
from tasks.push.apns.frames import (
    ACK,
    CANCEL,
    COMPRESSION_ERROR,
    CONTINUATION,
    DATA,
    DEFAULT_FRAME,
    DEFAULT_WINDOW,
    END_HEADERS,
    END_STREAM,
    ERROR_NAMES,
    FLOW_CONTROL_ERROR,
    FRAME_SIZE_ERROR,
    GOAWAY,
    HEADERS,
    MAX_STREAM_ID,
    MAX_WINDOW,
    NO_ERROR,
    PADDED,
    PING,
    PREFACE,
    PROTOCOL_ERROR,
    PUSH_PROMISE,
    REFUSED_STREAM,
    RST_STREAM,
    SETTINGS,
    SETTINGS_ENABLE_PUSH,
    SETTINGS_HEADER_TABLE_SIZE,
    SETTINGS_INITIAL_WINDOW_SIZE,
    SETTINGS_MAX_CONCURRENT_STREAMS,
    SETTINGS_MAX_FRAME_SIZE,
    WINDOW_UPDATE,
    Failure,
    Outcome,
    ProtocolViolation,
    Response,
    frame,
    header_fragment,
    split_frames,
)

# What we let the server send: answers are tiny, so generous windows mean no WINDOW_UPDATE
# round trips; a response body over MAX_BODY is not APNs and is cut off.
RECEIVE_WINDOW = 1 << 24
STREAM_RECEIVE_WINDOW = 1 << 20
MAX_BODY = 64 * 1024
# Until the server's SETTINGS say otherwise (RFC 9113 allows unlimited; be modest).
INITIAL_MAX_STREAMS = 100
SWEEP_INTERVAL = 0.1  # seconds between timeout sweeps while streams are open
PING_DATA = b"farm-ok?"  # our liveness probe's 8 bytes

# Told each request's outcome, with the tag it was sent with; called on the loop, synchronously
# from inside the connection's own processing, so it must not raise nor send on this connection.
Done = Callable[[int, Outcome], None]


class _Stream:
    __slots__ = ("body", "deadline", "done", "headers", "id", "received", "started", "status",
                 "tag", "timeout", "window")

    def __init__(self, stream_id: int, done: Done, tag: int, body: bytes, window: int,
                 started: float, timeout: float) -> None:
        self.id, self.done, self.tag, self.body, self.window = stream_id, done, tag, body, window
        self.started, self.deadline, self.timeout = started, started + timeout, timeout
        self.status = 0
        self.headers: dict[str, str] = {}
        self.received = bytearray()


class Http2Connection(asyncio.Protocol):
    """One client connection. ``open`` it, ``submit`` requests, ``flush`` after a burst."""

    def __init__(self, loop: asyncio.AbstractEventLoop, stream_cap: int = 1000) -> None:
        self.loop, self.stream_cap = loop, stream_cap
        self.transport: asyncio.Transport | None = None
        self.decoder = hpack_codec.Decoder()
        self.buffer = bytearray()
        self.out: list[bytes] = []
        self.streams: dict[int, _Stream] = {}  # in the order they started
        # Requests waiting for a stream: (block, body, timeout, done, tag).
        self.waiting: deque[tuple[bytes, bytes, float, Done, int]] = deque()
        self.queue_moved = 0.0  # when the waiting queue last got a stream (or began)
        self.blocked: deque[_Stream] = deque()  # streams with body bytes awaiting window
        self.next_id = 1
        self.max_streams = min(INITIAL_MAX_STREAMS, stream_cap)
        self.send_window = DEFAULT_WINDOW
        self.initial_window = DEFAULT_WINDOW
        self.max_frame = DEFAULT_FRAME
        self.table_size_update: bytes = b""  # to open the next header block, when due
        self.table_size = hpack_codec.DEFAULT_TABLE_SIZE  # what our encoder last said it uses
        self.unacknowledged = 0  # DATA bytes received since our last connection WINDOW_UPDATE
        self.continuing: tuple[int, int, bytearray] | None = None  # a block awaiting CONTINUATION
        self.settled: asyncio.Future[None] = loop.create_future()  # the server's first SETTINGS
        self.closed: str | None = None  # why, once no new stream may start here
        self.draining = False  # GOAWAY received or ids used up: finish open streams, start none
        self.last_used = loop.time()
        self.heard = loop.time()  # when bytes last arrived from the server
        self.pinged = False  # a liveness PING is out, and nothing has arrived since
        self.sweeper: asyncio.TimerHandle | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    @classmethod
    async def open(cls, host: str, port: int, context: ssl.SSLContext, timeout: float,
                   stream_cap: int = 1000) -> Http2Connection:
        """Connect, negotiate h2 by ALPN, exchange SETTINGS. Raises OSError/ssl.SSLError/
        TimeoutError/ConnectionError; the caller turns them into results."""
        loop = asyncio.get_running_loop()
        made: list[Http2Connection] = []

        def protocol() -> Http2Connection:
            made.append(cls(loop, stream_cap))
            return made[-1]

        try:
            async with asyncio.timeout(timeout):
                await loop.create_connection(protocol, host, port, ssl=context,
                                             server_hostname=host)
                await made[0].settled
        except BaseException:
            for conn in made:  # connected, then timed out or cancelled: do not leak it
                conn.abort("open failed")
            raise
        return made[0]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        tls = transport.get_extra_info("ssl_object")
        if tls is None or tls.selected_alpn_protocol() != "h2":
            self._settle(ConnectionError("the server did not negotiate HTTP/2 (ALPN h2)"))
            transport.abort()
            return
        settings = b"".join(key.to_bytes(2, "big") + value.to_bytes(4, "big") for key, value in (
            (SETTINGS_ENABLE_PUSH, 0), (SETTINGS_INITIAL_WINDOW_SIZE, STREAM_RECEIVE_WINDOW)))
        grow = (RECEIVE_WINDOW - DEFAULT_WINDOW).to_bytes(4, "big")
        transport.write(PREFACE + frame(SETTINGS, 0, 0, settings)
                        + frame(WINDOW_UPDATE, 0, 0, grow))

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f"connection lost: {exc}" if exc else "connection closed by the server"
        self._settle(ConnectionError(reason))
        self._fail_all(reason)

    def usable(self, idle_limit: float) -> bool:
        if self.closed or self.draining or self.transport is None or self.transport.is_closing():
            return False
        if not self.streams and self.loop.time() - self.last_used > idle_limit:
            # Idle this long, a middlebox may have dropped it silently: start afresh.
            self.close("idle")
            return False
        return True

    def close(self, reason: str = "closed") -> None:
        """Say GOAWAY and close; open streams get a Failure."""
        if self.transport is not None and not self.transport.is_closing():
            self.out.append(frame(GOAWAY, 0, 0, (0).to_bytes(4, "big")
                                  + NO_ERROR.to_bytes(4, "big")))
            self.flush()
            self.transport.close()
        self._fail_all(reason)

    def abort(self, reason: str, timeout: bool = False) -> None:
        if self.transport is not None:
            self.transport.abort()
        self._fail_all(reason, timeout)

    # -- requests ----------------------------------------------------------------------------------

    def send(self, block: bytes, body: bytes, timeout: float, done: Done, tag: int) -> None:
        """Queue one request (a pre-encoded header block, a body); ``done(tag, outcome)`` is
        called once it ends. ``timeout`` runs from when it gets a stream. Call ``flush`` after a
        burst."""
        if self.closed or self.draining:
            done(tag, Failure(f"not sent: {self.closed or 'connection draining'}",
                              unprocessed=True))
        elif len(self.streams) < self.max_streams and not self.waiting:
            self._start(block, body, timeout, done, tag)
        else:
            if not self.waiting:
                self.queue_moved = self.loop.time()
            self.waiting.append((block, body, timeout, done, tag))
            self._arm()

    def submit(self, block: bytes, body: bytes, timeout: float) -> asyncio.Future[Outcome]:
        """``send``, with a future for the outcome."""
        future: asyncio.Future[Outcome] = self.loop.create_future()

        def done(_: int, outcome: Outcome) -> None:
            if not future.done():
                future.set_result(outcome)

        self.send(block, body, timeout, done, 0)
        return future

    def flush(self) -> None:
        if self.out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self.out))
        self.out.clear()

    def _start(self, block: bytes, body: bytes, timeout: float, done: Done, tag: int) -> None:
        stream_id = self.next_id
        self.next_id += 2
        if self.next_id > MAX_STREAM_ID:
            self.draining = True  # a new connection takes over from here
        if self.table_size_update:
            block, self.table_size_update = self.table_size_update + block, b""
        now = self.loop.time()
        self.last_used = now
        stream = _Stream(stream_id, done, tag, body, self.initial_window, now, timeout)
        self.streams[stream_id] = stream
        if len(block) <= self.max_frame:
            self.out.append(frame(HEADERS, END_HEADERS | (0 if body else END_STREAM), stream_id,
                                  block))
        else:
            chunks = [block[i:i + self.max_frame] for i in range(0, len(block), self.max_frame)]
            self.out.append(frame(HEADERS, 0 if body else END_STREAM, stream_id, chunks[0]))
            for i, chunk in enumerate(chunks[1:], 2):
                self.out.append(frame(CONTINUATION, END_HEADERS if i == len(chunks) else 0,
                                      stream_id, chunk))
        if body and (self.blocked or not self._send_body(stream)):
            self.blocked.append(stream)
        self._arm()

    def _arm(self) -> None:
        if self.sweeper is None:
            self.sweeper = self.loop.call_later(SWEEP_INTERVAL, self._sweep)

    def _send_body(self, stream: _Stream) -> bool:
        """Send what flow control allows of the stream's body; True once all of it is out."""
        while stream.body:
            n = min(len(stream.body), self.send_window, stream.window, self.max_frame)
            if n <= 0:
                return False
            chunk, stream.body = stream.body[:n], stream.body[n:]
            self.send_window -= n
            stream.window -= n
            self.out.append(frame(DATA, 0 if stream.body else END_STREAM, stream.id, chunk))
        return True

    def _unblock(self) -> None:
        while self.blocked:
            stream = self.blocked[0]
            if stream.id in self.streams and not self._send_body(stream):
                return
            self.blocked.popleft()

    def _start_waiting(self) -> None:
        if self.waiting and len(self.streams) < self.max_streams and not self.draining:
            self.queue_moved = self.loop.time()
            while self.waiting and len(self.streams) < self.max_streams and not self.draining:
                self._start(*self.waiting.popleft())

    def _finish(self, stream_id: int, outcome: Outcome) -> None:
        stream = self.streams.pop(stream_id, None)
        if stream is not None:
            stream.done(stream.tag, outcome)

    def _fail_all(self, reason: str, timeout: bool = False) -> None:
        """No new stream starts here: open streams fail (outcome unknown: they were sent),
        waiting requests fail unsent."""
        self.closed = self.closed or reason
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            stream.done(stream.tag, Failure(reason, timeout=timeout))
        self._fail_waiting(f"not sent: {reason}", timeout)
        self.blocked.clear()
        if self.sweeper is not None:
            self.sweeper.cancel()
            self.sweeper = None

    def _fail_waiting(self, error: str, timeout: bool = False) -> None:
        while self.waiting:
            _, _, _, done, tag = self.waiting.popleft()
            done(tag, Failure(error, unprocessed=True, timeout=timeout))

    def _sweep(self) -> None:
        """Every SWEEP_INTERVAL while requests are open or waiting: cancel late streams alone,
        probe a quiet connection with a PING, drop one that stayed silent for a whole timeout,
        and give up the waiting queue when no stream came free for a whole timeout."""
        self.sweeper = None
        now = self.loop.time()
        quiet = now - self.heard
        if self.streams:
            oldest = next(iter(self.streams.values()))
            if not self.pinged and min(quiet, now - oldest.started) >= oldest.timeout / 2:
                self.out.append(frame(PING, 0, 0, PING_DATA))
                self.pinged = True
            late = [s for s in self.streams.values() if s.deadline <= now]
            for stream in late:
                if quiet >= stream.timeout:  # not a byte for a whole timeout, PING included
                    self.out.clear()
                    self.abort(f"timeout: no answer in {stream.timeout:g}s and the connection "
                               "silent", timeout=True)
                    return
                self.out.append(frame(RST_STREAM, 0, stream.id, CANCEL.to_bytes(4, "big")))
                self._finish(stream.id, Failure(f"timeout: no answer in {stream.timeout:g}s",
                                                timeout=True))
            if late:
                self._start_waiting()
        if self.waiting and now - self.queue_moved >= self.waiting[0][2]:
            # No stream came free for a whole timeout (the server's limit stayed at 0): the
            # queue is given up, unsent.
            self._fail_waiting(f"not sent: no stream free in {self.waiting[0][2]:g}s",
                               timeout=True)
        self.flush()
        if self.streams or self.waiting:
            self._arm()

    def _settle(self, error: BaseException | None = None) -> None:
        if not self.settled.done():
            if error is None:
                self.settled.set_result(None)
            else:
                self.settled.set_exception(error)
                self.settled.exception()  # retrieved: nobody may be awaiting it any more

    # -- receiving ---------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self.heard = self.loop.time()
        self.pinged = False
        self.buffer += data
        try:
            frames, used = split_frames(self.buffer)  # we never raise SETTINGS_MAX_FRAME_SIZE
            del self.buffer[:used]
            for kind, flags, stream_id, payload in frames:
                self._frame(kind, flags, stream_id, payload)
        except (ProtocolViolation, hpack_codec.HpackError) as exc:
            code = exc.code if isinstance(exc, ProtocolViolation) else COMPRESSION_ERROR
            self.out.append(frame(GOAWAY, 0, 0, (0).to_bytes(4, "big") + code.to_bytes(4, "big")))
            self.flush()
            self.abort(f"connection error: {ERROR_NAMES.get(code, code)}: {exc}")
            return
        if self.blocked:  # a finished stream may have been holding the queue of bodies
            self._unblock()
        if self.unacknowledged > RECEIVE_WINDOW // 2:
            self.out.append(frame(WINDOW_UPDATE, 0, 0, self.unacknowledged.to_bytes(4, "big")))
            self.unacknowledged = 0
        self._start_waiting()
        self.flush()
        if self.draining and not self.streams and not self.closed:
            self.close("connection drained")

    def _frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self.continuing is not None and kind != CONTINUATION:
            raise ProtocolViolation(PROTOCOL_ERROR, "header block interrupted")
        if kind == DATA:
            self.unacknowledged += len(payload)
            if flags & PADDED:
                payload = payload[1:len(payload) - payload[0]]
            stream = self.streams.get(stream_id)
            if stream is not None:
                stream.received += payload
                if flags & END_STREAM:
                    self._complete(stream)
                elif len(stream.received) > MAX_BODY:
                    self.out.append(frame(RST_STREAM, 0, stream_id, CANCEL.to_bytes(4, "big")))
                    self._finish(stream_id, Failure("response body over 64 KiB: not APNs"))
        elif kind == HEADERS:
            self.continuing = (stream_id, flags, bytearray(header_fragment(flags, payload)))
            if flags & END_HEADERS:
                self._headers()
        elif kind == CONTINUATION:
            if self.continuing is None or self.continuing[0] != stream_id:
                raise ProtocolViolation(PROTOCOL_ERROR, "unexpected CONTINUATION")
            self.continuing[2].extend(payload)
            if flags & END_HEADERS:
                self._headers()
        elif kind == RST_STREAM:
            code = int.from_bytes(payload[:4], "big")
            name = ERROR_NAMES.get(code, str(code))
            self._finish(stream_id, Failure(f"stream reset by the server: {name}",
                                            unprocessed=code == REFUSED_STREAM))
        elif kind == SETTINGS:
            if not flags & ACK:
                self._settings(payload)
        elif kind == PING:
            if not flags & ACK:
                self.out.append(frame(PING, ACK, 0, payload))
        elif kind == GOAWAY:
            self._goaway(payload)
        elif kind == WINDOW_UPDATE:
            increment = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
            if stream_id == 0:
                self.send_window += increment
                if self.send_window > MAX_WINDOW:
                    raise ProtocolViolation(FLOW_CONTROL_ERROR, "window over 2^31-1")
            elif (stream := self.streams.get(stream_id)) is not None:
                stream.window += increment
            self._unblock()
        elif kind == PUSH_PROMISE:
            raise ProtocolViolation(PROTOCOL_ERROR, "PUSH_PROMISE with push disabled")
        # PRIORITY and unknown frame types are ignored, as RFC 9113 says.

    def _headers(self) -> None:
        assert self.continuing is not None
        stream_id, flags, block = self.continuing
        self.continuing = None
        headers = self.decoder.decode(bytes(block))  # always: keeps HPACK in step
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        if not stream.status:
            fields = dict(headers)
            status = fields.pop(":status", "")
            if not status.isdigit():
                self.out.append(frame(RST_STREAM, 0, stream_id, PROTOCOL_ERROR.to_bytes(4, "big")))
                self._finish(stream_id, Failure("response without a :status"))
                return
            if 100 <= int(status) < 200:
                return  # informational; the final answer follows
            stream.status, stream.headers = int(status), fields
        if flags & END_STREAM:
            self._complete(stream)

    def _complete(self, stream: _Stream) -> None:
        if stream.body:  # answered before we finished sending: close our half (RFC 9113 8.1)
            self.out.append(frame(RST_STREAM, 0, stream.id, NO_ERROR.to_bytes(4, "big")))
            stream.body = b""
        self._finish(stream.id, Response(stream.status, stream.headers, bytes(stream.received)))

    def _settings(self, payload: bytes) -> None:
        if len(payload) % 6:
            raise ProtocolViolation(FRAME_SIZE_ERROR, "SETTINGS length not a multiple of 6")
        for i in range(0, len(payload), 6):
            key = int.from_bytes(payload[i:i + 2], "big")
            value = int.from_bytes(payload[i + 2:i + 6], "big")
            if key == SETTINGS_MAX_CONCURRENT_STREAMS:
                self.max_streams = min(value, self.stream_cap)
            elif key == SETTINGS_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise ProtocolViolation(FLOW_CONTROL_ERROR, "initial window over 2^31-1")
                for stream in self.streams.values():  # RFC 9113 6.9.2: open streams shift too
                    stream.window += value - self.initial_window
                self.initial_window = value
            elif key == SETTINGS_MAX_FRAME_SIZE:
                if not DEFAULT_FRAME <= value <= 2**24 - 1:
                    raise ProtocolViolation(PROTOCOL_ERROR, "bad SETTINGS_MAX_FRAME_SIZE")
                self.max_frame = value
            elif key == SETTINGS_HEADER_TABLE_SIZE:
                # We index nothing, but must still say the size we use when it changes
                # (RFC 7541 4.2).
                size = min(value, hpack_codec.DEFAULT_TABLE_SIZE)
                if size != self.table_size:
                    self.table_size = size
                    self.table_size_update = hpack_codec.integer(size, 5, 0x20)
        self.out.append(frame(SETTINGS, ACK, 0))
        self._unblock()
        self._settle()

    def _goaway(self, payload: bytes) -> None:
        last = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
        code = int.from_bytes(payload[4:8], "big")
        debug = payload[8:].decode("utf-8", "replace")[:200]
        self.draining = True
        reason = f"GOAWAY {ERROR_NAMES.get(code, code)}" + (f" {debug}" if debug else "")
        for stream_id in [i for i in self.streams if i > last]:  # never processed
            self._finish(stream_id, Failure(f"not processed: {reason}", unprocessed=True))
        self._fail_waiting(f"not sent: {reason}")

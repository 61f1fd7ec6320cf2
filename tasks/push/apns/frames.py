"""HTTP/2 framing (RFC 9113) for the APNs client: the frame and error constants, building a
frame, splitting received bytes into frames, and what a request ends as (``Response`` or
``Failure``). Shared by the client connection (http2.py) and the tests' servers."""

from __future__ import annotations

from typing import NamedTuple

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, \
    CONTINUATION = range(10)
END_STREAM = ACK = 0x1
END_HEADERS, PADDED, PRIORITY_FLAG = 0x4, 0x8, 0x20
NO_ERROR, PROTOCOL_ERROR, FLOW_CONTROL_ERROR, FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, \
    COMPRESSION_ERROR = 0x0, 0x1, 0x3, 0x6, 0x7, 0x8, 0x9
ERROR_NAMES = {0: "NO_ERROR", 1: "PROTOCOL_ERROR", 2: "INTERNAL_ERROR", 3: "FLOW_CONTROL_ERROR",
               4: "SETTINGS_TIMEOUT", 5: "STREAM_CLOSED", 6: "FRAME_SIZE_ERROR",
               7: "REFUSED_STREAM", 8: "CANCEL", 9: "COMPRESSION_ERROR", 10: "CONNECT_ERROR",
               11: "ENHANCE_YOUR_CALM", 12: "INADEQUATE_SECURITY", 13: "HTTP_1_1_REQUIRED"}
SETTINGS_HEADER_TABLE_SIZE, SETTINGS_ENABLE_PUSH, SETTINGS_MAX_CONCURRENT_STREAMS, \
    SETTINGS_INITIAL_WINDOW_SIZE, SETTINGS_MAX_FRAME_SIZE = 1, 2, 3, 4, 5
MAX_STREAM_ID = 2**31 - 1
MAX_WINDOW = 2**31 - 1
DEFAULT_WINDOW = 65535
DEFAULT_FRAME = 16384


class Response(NamedTuple):
    status: int
    headers: dict[str, str]
    body: bytes


class Failure(NamedTuple):
    """No response. ``unprocessed``: the server certainly did not act on the request (never
    sent, REFUSED_STREAM, or past a GOAWAY's last stream id), so sending it again cannot
    duplicate it. Otherwise the request left and its outcome is unknown (a late stream we
    cancelled, another RST_STREAM code, the connection lost): the server may have acted on it.
    ``timeout``: no answer in time (a late stream, a silent connection, no stream free)."""

    error: str
    unprocessed: bool = False
    timeout: bool = False


Outcome = Response | Failure


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return (len(payload).to_bytes(3, "big") + bytes((kind, flags))
            + stream_id.to_bytes(4, "big") + payload)


def split_frames(data: bytearray, max_frame: int = DEFAULT_FRAME
                 ) -> tuple[list[tuple[int, int, int, bytes]], int]:
    """The whole frames at the start of ``data`` as (type, flags, stream id, payload), and how
    many bytes they took; a frame over ``max_frame`` is a connection error (FRAME_SIZE_ERROR)."""
    frames: list[tuple[int, int, int, bytes]] = []
    pos, end = 0, len(data)
    with memoryview(data) as view:
        while end - pos >= 9:
            length = int.from_bytes(view[pos:pos + 3], "big")
            if length > max_frame:
                raise ProtocolViolation(FRAME_SIZE_ERROR, f"frame of {length} bytes")
            if end - pos < 9 + length:
                break
            stream_id = int.from_bytes(view[pos + 5:pos + 9], "big") & 0x7FFFFFFF
            frames.append((view[pos + 3], view[pos + 4], stream_id,
                           bytes(view[pos + 9:pos + 9 + length])))
            pos += 9 + length
    return frames, pos


def header_fragment(flags: int, payload: bytes) -> bytes:
    """A HEADERS frame's header block fragment, its padding and priority fields removed."""
    if flags & PADDED:
        payload = payload[1:len(payload) - payload[0]]
    if flags & PRIORITY_FLAG:
        payload = payload[5:]
    return payload


class ProtocolViolation(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code

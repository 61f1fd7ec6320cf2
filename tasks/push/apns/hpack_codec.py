"""HPACK (RFC 7541), the little an APNs client needs: literal encoding and a lean decoder.

Requests are encoded as literals that never enter the server's dynamic table, so the encoder has
no state to keep in step and a header block can be built once and reused: only the device path
and the apns-id differ between two pushes. Responses can use the whole of HPACK (Apple's do:
indexing, Huffman), so decoding is complete. Per request this costs a fraction of the ``hpack``
package's Decoder, which alone would spend most of a 10,000 pushes/s budget.
"""

from __future__ import annotations

from collections import deque

from hpack import HPACKDecodingError
from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

STATIC_TABLE: list[tuple[str, str]] = [
    (name.decode(), value.decode()) for name, value in HeaderTable.STATIC_TABLE]
STATIC_NAME = {name: i + 1 for i, (name, _) in reversed(list(enumerate(STATIC_TABLE)))}
DEFAULT_TABLE_SIZE = 4096  # SETTINGS_HEADER_TABLE_SIZE, which neither side changes


class HpackError(ValueError):
    """A header block that does not decode: a COMPRESSION_ERROR for the whole connection."""


def integer(value: int, bits: int, flags: int = 0) -> bytes:
    """An HPACK integer with a ``bits``-bit prefix, ``flags`` in the prefix's high bits."""
    mask = (1 << bits) - 1
    if value < mask:
        return bytes((flags | value,))
    out, value = bytearray((flags | mask,)), value - mask
    while value >= 128:
        out.append(value & 127 | 128)
        value >>= 7
    out.append(value)
    return bytes(out)


def string(data: bytes) -> bytes:
    """A string literal, not Huffman-coded (the server's decoding cost, not ours, and tiny)."""
    return integer(len(data), 7) + data


def literal(name: str, value: str | bytes, *, sensitive: bool = False) -> bytes:
    """One header as a literal without indexing (never indexed when ``sensitive``: RFC 7541
    7.1.3 asks that of credentials, so no intermediary ever caches the provider token)."""
    raw = value if isinstance(value, bytes) else value.encode()
    flags = 0x10 if sensitive else 0x00
    index = STATIC_NAME.get(name)
    head = integer(index, 4, flags) if index else bytes((flags,)) + string(name.encode())
    return head + string(raw)


def indexed(name: str, value: str) -> bytes:
    """A header whose name and value are both in the static table (``:method POST`` ...)."""
    return integer(STATIC_TABLE.index((name, value)) + 1, 7, 0x80)


class Decoder:
    """Decodes header blocks, keeping the dynamic table in step with the peer's encoder.
    Huffman-coded strings are remembered: the same few values come back on every response."""

    def __init__(self, max_size: int = DEFAULT_TABLE_SIZE) -> None:
        self.table: deque[tuple[str, str]] = deque()  # newest first
        self.size, self.max_size, self.limit = 0, max_size, max_size
        self.huffman: dict[bytes, str] = {}

    def decode(self, data: bytes) -> list[tuple[str, str]]:
        headers: list[tuple[str, str]] = []
        pos = 0
        try:
            while pos < len(data):
                byte = data[pos]
                if byte & 0x80:  # indexed field
                    index, pos = self._integer(data, pos, 7)
                    headers.append(self._entry(index))
                    continue
                if byte & 0xE0 == 0x20:  # dynamic table size update
                    self.max_size, pos = self._integer(data, pos, 5)
                    if self.max_size > self.limit:
                        raise HpackError("table size update over SETTINGS_HEADER_TABLE_SIZE")
                    self._evict(0)
                    continue
                index, pos = self._integer(data, pos, 6 if byte & 0x40 else 4)
                if index:
                    name = self._entry(index)[0]
                else:
                    name, pos = self._string(data, pos)
                value, pos = self._string(data, pos)
                headers.append((name, value))
                if byte & 0x40:  # literal with incremental indexing
                    size = 32 + len(name) + len(value)
                    self._evict(size)
                    if size <= self.max_size:
                        self.table.appendleft((name, value))
                        self.size += size
        except (IndexError, ValueError, HPACKDecodingError) as exc:
            raise HpackError(f"bad header block: {exc}") from exc
        return headers

    def _entry(self, index: int) -> tuple[str, str]:
        if 0 < index <= len(STATIC_TABLE):
            return STATIC_TABLE[index - 1]
        if index <= 0:
            raise IndexError(f"header index {index}")
        return self.table[index - len(STATIC_TABLE) - 1]

    def _evict(self, room: int) -> None:
        while self.table and self.size + room > self.max_size:
            name, value = self.table.pop()
            self.size -= 32 + len(name) + len(value)

    @staticmethod
    def _integer(data: bytes, pos: int, bits: int) -> tuple[int, int]:
        mask = (1 << bits) - 1
        value, pos = data[pos] & mask, pos + 1
        if value < mask:
            return value, pos
        shift = 0
        while True:
            byte, pos = data[pos], pos + 1
            value += (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value, pos
            if shift > 28:
                raise ValueError("integer too large")

    def _string(self, data: bytes, pos: int) -> tuple[str, int]:
        huffman = data[pos] & 0x80
        length, pos = self._integer(data, pos, 7)
        end = pos + length
        if end > len(data):
            raise IndexError("string runs past the block")
        raw = data[pos:end]
        # Octets inside (table sizes count bytes); header values are ASCII in practice.
        if not huffman:
            return raw.decode("latin-1"), end
        text = self.huffman.get(raw)
        if text is None:
            text = decode_huffman(raw).decode("latin-1")
            if len(self.huffman) < 1024:
                self.huffman[raw] = text
        return text, end

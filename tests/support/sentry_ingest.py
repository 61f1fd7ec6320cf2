"""A local stand-in for Sentry's ingest: the envelope endpoint a DSN points at
(``POST /api/<project>/envelope/``), gzip'd or not, keeping each envelope's raw bytes (to grep
for secrets) and the events in it (to read)."""

from __future__ import annotations

import gzip
import json
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Envelope:
    raw: bytes  # decompressed, as Sentry would parse it
    headers: dict[str, Any]
    items: list[tuple[dict[str, Any], bytes]]  # (item header, payload)

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(payload) for header, payload in self.items
                if header.get("type") == "event"]


def parse_envelope(raw: bytes) -> Envelope:
    """Sentry's envelope format: a JSON header line, then items, each a JSON header line and a
    payload of ``length`` bytes (or up to the next newline when the header gives none)."""
    head, _, rest = raw.partition(b"\n")
    items = []
    while rest.strip():
        line, _, rest = rest.partition(b"\n")
        header = json.loads(line)
        if "length" in header:
            payload, rest = rest[:header["length"]], rest[header["length"]:]
            rest = rest.removeprefix(b"\n")
        else:
            payload, _, rest = rest.partition(b"\n")
        items.append((header, payload))
    return Envelope(raw, json.loads(head), items)


@dataclass
class SentryIngest:
    port: int = 0
    envelopes: list[Envelope] = field(default_factory=list)
    auth: list[str] = field(default_factory=list)  # each request's X-Sentry-Auth
    errors: list[str] = field(default_factory=list)  # requests it could not read
    lock: threading.Lock = field(default_factory=threading.Lock)

    def dsn(self, key: str = "publickey", project: int = 1) -> str:
        return f"http://{key}@127.0.0.1:{self.port}/{project}"

    def events(self) -> list[dict[str, Any]]:
        with self.lock:
            return [e for env in self.envelopes for e in env.events()]

    def raw(self) -> bytes:
        with self.lock:
            return b"\n".join(env.raw for env in self.envelopes)

    def take(self, body: bytes, encoding: str, auth: str) -> None:
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        elif encoding not in ("", "identity"):
            raise ValueError(f"unexpected Content-Encoding {encoding!r}")
        envelope = parse_envelope(body)
        with self.lock:
            self.envelopes.append(envelope)
            self.auth.append(auth)


def _handler(ingest: SentryIngest) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            parts = self.path.split("?")[0].strip("/").split("/")
            if len(parts) != 3 or parts[0] != "api" or parts[2] != "envelope":
                self.send_error(404)
                return
            try:
                ingest.take(body, self.headers.get("Content-Encoding", ""),
                            self.headers.get("X-Sentry-Auth", ""))
            except Exception as exc:  # the test reads these: a malformed envelope is a failure
                with ingest.lock:
                    ingest.errors.append(repr(exc))
                self.send_error(400)
                return
            answer = b"{}"
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

    return Handler


@contextmanager
def serve_ingest() -> Iterator[SentryIngest]:
    """An ingest on a free loopback port, for as long as the block runs."""
    ingest = SentryIngest()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(ingest))
    ingest.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield ingest
    finally:
        server.shutdown()
        server.server_close()

"""S3 for the tests: moto's standalone server over real HTTP on a free loopback port (never the
in-process mock decorators, which bypass botocore's HTTP layer), and a fault-injecting reverse
proxy in front of it that answers chosen requests with real S3-style errors.

Loaded as a plugin from conftest.py. Each test gets its own bucket, so tests never interfere.
"""

from __future__ import annotations

import functools
import http.client
import logging
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.config import Config
from moto.server import ThreadedMotoServer

from config.settings import Settings, load_settings
from workers.embedded_redis import free_port

KEY_ID = SECRET = "testing"  # moto accepts any credentials; these keep boto3's chain out of it
REGION = "us-east-1"


class MotoS3:
    """One moto server for the session."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)

    def start(self) -> MotoS3:
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request hides failures
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    @functools.cached_property
    def _client(self) -> Any:
        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint, region_name=REGION,
            aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET,
            config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}))

    def client(self) -> Any:
        """A plain boto3 client, separate from any store, to check what really landed."""
        return self._client

    def new_bucket(self) -> str:
        name = f"blobs-{uuid.uuid4().hex[:16]}"
        self.client().create_bucket(Bucket=name)
        return name

    def settings(self, bucket: str, prefix: str = "", *, endpoint: str | None = None,
                 **env: str) -> Settings:
        """Settings for an s3:// store on this server; ``env`` adds FARM_* variables."""
        return load_settings({
            "FARM_STORAGE_URL": f"s3://{bucket}/{prefix}".rstrip("/"),
            "FARM_S3_ENDPOINT_URL": endpoint or self.endpoint,
            "FARM_S3_REGION": REGION,
            "FARM_S3_ACCESS_KEY_ID": KEY_ID,
            "FARM_S3_SECRET_ACCESS_KEY": SECRET,
            **env,
        }, dotenv=Path("/nonexistent"))


@dataclass
class Fault:
    method: str
    times: int
    status: int
    code: str
    message: str
    retry_after: str | None
    path_contains: str


MAX_BODY = 64 * 1024 * 1024  # bounded: nothing a test uploads comes near this
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
              "proxy-connection", "expect", "content-length"}


class FaultProxy:
    """A loopback reverse proxy before moto: ``fail("PUT", times=2)`` answers the next two PUTs
    with 503 SlowDown, then forwards again. ``requests`` records every request it saw, so a test
    can tell the farm's retries from hidden botocore ones."""

    def __init__(self, upstream: str) -> None:
        up = urlsplit(upstream)
        self.upstream = (up.hostname or "127.0.0.1", up.port or 80)
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status answered)
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.proxy = self  # type: ignore[attr-defined]
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def fail(self, method: str, times: int = 1, *, status: int = 503, code: str = "SlowDown",
             message: str = "Please reduce your request rate.", retry_after: str | None = None,
             path_contains: str = "") -> None:
        with self._lock:
            self._faults.append(Fault(method.upper(), times, status, code, message, retry_after,
                                      path_contains))

    def count(self, method: str, status: int | None = None) -> int:
        with self._lock:
            return sum(1 for m, _, st in self.requests
                       if m == method.upper() and (status is None or st == status))

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.times > 0 and fault.method == method and fault.path_contains in path:
                    fault.times -= 1
                    return fault
            return None

    def _record(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self.requests.append((method, path, status))

    def handle(self, h: _Handler) -> None:
        body = _read_body(h)
        if body is None:
            h.close_connection = True
            h.send_error(413)
            return
        fault = self._take_fault(h.command, h.path)
        if fault is not None:
            self._record(h.command, h.path, fault.status)
            _send_s3_error(h, fault)
            return
        conn = http.client.HTTPConnection(*self.upstream, timeout=30)
        try:
            conn.putrequest(h.command, h.path, skip_host=True, skip_accept_encoding=True)
            for name, value in h.headers.items():  # Host included: SigV4 signed it
                if name.lower() not in HOP_BY_HOP:
                    conn.putheader(name, value)
            if body or h.command in ("PUT", "POST"):
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body or None)
            resp = conn.getresponse()
            data = resp.read()
            self._record(h.command, h.path, resp.status)
            h.send_response_only(resp.status, resp.reason)
            for name, value in resp.getheaders():
                if name.lower() not in HOP_BY_HOP or (h.command == "HEAD"
                                                      and name.lower() == "content-length"):
                    h.send_header(name, value)
            if h.command != "HEAD" and resp.status not in (204, 304):
                h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            if h.command != "HEAD":
                h.wfile.write(data)
        finally:
            conn.close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as botocore's pool expects
    timeout = 10  # bounded: an idle kept-alive connection is dropped, not held forever

    def _proxy(self) -> None:
        self.server.proxy.handle(self)  # type: ignore[attr-defined]

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _proxy

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the requests list is the log


def _read_body(h: BaseHTTPRequestHandler) -> bytes | None:
    """The request body (chunked or not), or None when over MAX_BODY."""
    if "chunked" in h.headers.get("Transfer-Encoding", "").lower():
        parts: list[bytes] = []
        total = 0
        while True:
            size = int(h.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while h.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                    pass
                return b"".join(parts)
            total += size
            if total > MAX_BODY:
                return None
            parts.append(h.rfile.read(size))
            h.rfile.readline()
    length = int(h.headers.get("Content-Length") or 0)
    return None if length > MAX_BODY else h.rfile.read(length)


def _send_s3_error(h: BaseHTTPRequestHandler, fault: Fault) -> None:
    """What S3 itself sends: an XML <Error> body, a request id, optionally Retry-After."""
    request_id = uuid.uuid4().hex[:16].upper()
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{fault.code}</Code>'
            f"<Message>{fault.message}</Message><RequestId>{request_id}</RequestId>"
            f"<HostId>fault-proxy</HostId></Error>").encode()
    h.send_response_only(fault.status)
    h.send_header("Content-Type", "application/xml")
    h.send_header("x-amz-request-id", request_id)
    if fault.retry_after is not None:
        h.send_header("Retry-After", fault.retry_after)
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    if h.command != "HEAD":
        h.wfile.write(body)


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[MotoS3]:
    server = MotoS3().start()
    yield server
    server.stop()


@pytest.fixture
def s3_bucket(moto_s3: MotoS3) -> str:
    """A fresh bucket on the session's moto server, this test's alone."""
    return moto_s3.new_bucket()


@pytest.fixture
def s3_proxy(moto_s3: MotoS3) -> Iterator[FaultProxy]:
    proxy = FaultProxy(moto_s3.endpoint).start()
    yield proxy
    proxy.stop()

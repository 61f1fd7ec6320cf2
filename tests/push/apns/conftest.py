"""The conformance tests' servers: a throwaway CA, our client's TLS context, ``serve``, which
starts scriptable h2 servers (h2_server.py), and ``node_serve``, which starts scriptable servers on
Node's built-in http2 module (node_server.py, node_h2_server.js); both stop them after the test."""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.push.apns.h2_server import H2Server
from tests.push.apns.node_server import NodeH2Server, node_binary


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def ca_pem(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("h2-conformance") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture(scope="session")
def tls(ca_pem: Path) -> ssl.SSLContext:
    """Our side's context, as client.py makes it."""
    context = ssl.create_default_context(cafile=str(ca_pem))
    context.set_alpn_protocols(["h2"])
    return context


@pytest.fixture
def serve(ca: trustme.CA) -> Iterator[Callable[..., H2Server]]:
    servers: list[H2Server] = []

    def start(**kw: Any) -> H2Server:
        servers.append(H2Server(ca, **kw))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def node_serve(ca: trustme.CA, tmp_path: Path) -> Iterator[Callable[..., NodeH2Server]]:
    """node_serve(settings={...}, rules={...}, ...): a Node http2 server (see node_h2_server.js
    for the configuration). Skips the test where ``node`` is not installed."""
    if node_binary() is None:
        pytest.skip("node not found: the Node http2 conformance server needs `node` on PATH "
                    "(Node's built-in http2 module, no npm packages)")
    servers: list[NodeH2Server] = []

    def start(**config: Any) -> NodeH2Server:
        servers.append(NodeH2Server(ca, tmp_path, **config))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()

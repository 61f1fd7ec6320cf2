"""Hosts for the tests: Linux network namespaces, each joined to this one by a veth pair, and
TCP forwarders on this side of each pair to the session's Redis servers (which listen on
loopback only).

A worker started with ``ip netns exec`` reaches Redis only through its namespace's link, so
``Host.cut()`` (the link down, inside the namespace) partitions it as a lost machine or a pulled
cable would: no FIN, no RST, its connections simply stop answering.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

SUBNET = "10.231"  # 10.231.<n>.1 on this side, .2 in the namespace


def can_make_namespaces() -> str | None:
    """None when this process can make namespaces and veth pairs, else why not."""
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    if os.geteuid() != 0:
        return "network namespaces need root (CAP_NET_ADMIN)"
    name = f"pf-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return None


def _ip(*args: str, ns: str | None = None) -> None:
    cmd = ["ip", "netns", "exec", ns, "ip", *args] if ns else ["ip", *args]
    subprocess.run(cmd, check=True, capture_output=True, text=True)


class Forwarder:
    """Accepts on ``host`` (a free port) and pipes each connection to 127.0.0.1:``target``."""

    def __init__(self, host: str, target: int) -> None:
        self.target = target
        self.server = socket.create_server((host, 0))
        self.port = int(self.server.getsockname()[1])
        self.sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:  # closed
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            with self._lock:
                self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.server.close()
        with self._lock:
            for s in self.sockets:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)  # wakes the pipes' blocked recv
                with contextlib.suppress(OSError):
                    s.close()


@dataclass
class Host:
    """One namespace: ``ns``, its address, and its forwarders (server port -> the forwarder that
    is the host's way to that server)."""

    ns: str
    n: int
    forwarders: dict[int, Forwarder] = field(default_factory=dict)

    @property
    def gateway(self) -> str:
        return f"{SUBNET}.{self.n}.1"

    @property
    def address(self) -> str:
        """This host's own address, which this side reaches over the link."""
        return f"{SUBNET}.{self.n}.2"

    def redis_url(self, password: str, port: int, db: int) -> str:
        """The URL that reaches 127.0.0.1:``port``, database ``db``, from inside this host."""
        return f"redis://:{password}@{self.gateway}:{self.forwarders[port].port}/{db}"

    def wrap(self, argv: list[str]) -> list[str]:
        """``argv`` run inside this host."""
        return ["ip", "netns", "exec", self.ns, *argv]

    def cut(self) -> None:
        """Pull the cable: the namespace's end of the link down."""
        _ip("link", "set", f"pfn{self.n}", "down", ns=self.ns)

    def restore(self) -> None:
        """Put the cable back."""
        _ip("link", "set", f"pfn{self.n}", "up", ns=self.ns)


@contextlib.contextmanager
def hosts(count: int, redis_ports: list[int]) -> Iterator[list[Host]]:
    """``count`` namespaces, each linked to this one and forwarded to the Redis servers on
    127.0.0.1:``redis_ports``; everything removed after (deleting a namespace deletes its
    link)."""
    made: list[Host] = []
    tag = os.getpid() % 10000
    try:
        for i in range(count):
            n = 10 + i
            host = Host(ns=f"pf-{tag}-{n}", n=n)
            _ip("netns", "add", host.ns)
            made.append(host)
            _ip("link", "add", f"pfh{n}", "type", "veth", "peer", "name", f"pfn{n}")
            _ip("link", "set", f"pfn{n}", "netns", host.ns)
            _ip("addr", "add", f"{host.gateway}/24", "dev", f"pfh{n}")
            _ip("link", "set", f"pfh{n}", "up")
            _ip("addr", "add", f"{SUBNET}.{n}.2/24", "dev", f"pfn{n}", ns=host.ns)
            _ip("link", "set", f"pfn{n}", "up", ns=host.ns)
            _ip("link", "set", "lo", "up", ns=host.ns)
            host.forwarders = {p: Forwarder(host.gateway, p) for p in redis_ports}
        yield made
    finally:
        for host in made:
            for forwarder in host.forwarders.values():
                forwarder.close()
            subprocess.run(["ip", "netns", "del", host.ns], capture_output=True)
            subprocess.run(["ip", "link", "del", f"pfh{host.n}"], capture_output=True)

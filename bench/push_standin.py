"""The push benchmark's APNs stand-in, in a spawned process of its own so it does not share the
measured client's GIL: started, asked for its tallies and stopped through a pipe.

It is the tests' stand-in (tests/support/apns_standin.py), so this needs the repo checkout and the
dev dependencies (trustme, pytest: ``pip install -e '.[dev]'``).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
import time
from collections import Counter
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, TypedDict, cast

REPO = Path(__file__).resolve().parents[1]  # tests/support/apns_standin.py lives in it
STARTUP_TIMEOUT = 60.0


class BenchFailure(Exception):
    """The run cannot give a figure; the message says why."""


class Tally(TypedDict):
    """The stand-in's answer to "tally": what it received since the last one."""

    cpu: float  # the stand-in process's CPU seconds so far
    received: int  # requests
    failed: Counter[tuple[int, str | None]]  # (status, reason) of the answers other than 200
    connections: int  # TLS connections that settled on h2, so far


def serve_standin(conn: Connection, directory: str) -> None:
    """Runs in the spawned child: start the stand-in, register a fresh provider key, report how
    to reach it, then answer the parent's "tally" requests until "stop" or the pipe closes."""
    try:
        sys.path.insert(0, str(REPO))
        from tests.support.apns_standin import ApnsStandin, make_key

        where = Path(directory)
        standin = ApnsStandin(where).start()
        key, public = make_key(where)
        standin.register(key.key_id, key.team_id, public, {key.topic})
    except BaseException as exc:  # reported to the parent, which says what to do
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", {"pid": os.getpid(), "endpoint": standin.endpoint,
                         "ca_file": str(standin.ca_pem_path), "key_id": key.key_id,
                         "team_id": key.team_id, "topic": key.topic,
                         "key_path": str(key.p8_path)}))
    try:
        while True:
            try:
                command = conn.recv()
            except (EOFError, KeyboardInterrupt):
                break
            if command != "tally":
                break
            cpu = time.process_time()
            seen = standin.received()
            conn.send(Tally(cpu=cpu, received=len(seen),
                            failed=Counter((r.status, r.reason) for r in seen if r.status != 200),
                            connections=standin.connections_made))
            # Forget the records (they would grow with every round), keep the key.
            standin.reset()
            standin.register(key.key_id, key.team_id, public, {key.topic})
    finally:
        standin.stop()


class Standin:
    """The parent's handle on the stand-in's process."""

    def __init__(self, directory: Path) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child_conn = ctx.Pipe()
        self.process = ctx.Process(target=serve_standin, args=(child_conn, str(directory)),
                                   name="apns-standin", daemon=True)
        self.process.start()
        child_conn.close()
        if not self.conn.poll(STARTUP_TIMEOUT):
            self.close()
            raise BenchFailure(f"the APNs stand-in's process did not start in "
                               f"{STARTUP_TIMEOUT:g}s")
        try:
            kind, info = self.conn.recv()
        except EOFError:
            kind, info = "error", f"its process exited with code {self.process.exitcode}"
        if kind != "ready":
            self.close()
            raise BenchFailure(f"the APNs stand-in did not start: {info} (it needs the repo's "
                               f"{REPO / 'tests/support/apns_standin.py'} and the dev "
                               "dependencies: pip install -e '.[dev]')")
        self.info: dict[str, Any] = info
        if info["pid"] == os.getpid() or info["pid"] != self.process.pid:
            self.close()
            raise BenchFailure(f"the stand-in runs in pid {info['pid']}, expected its own "
                               f"process {self.process.pid} (this process is {os.getpid()})")
        self.cpu = self.tally()["cpu"]
        self.received = self.connections = 0  # counted by check()

    def tally(self) -> Tally:
        """What the stand-in received since the last tally (then forgotten), and its CPU time."""
        self.conn.send("tally")
        if not self.conn.poll(30):
            raise BenchFailure("the APNs stand-in stopped answering")
        return cast(Tally, dict(self.conn.recv()))  # unpickled: the child sent a Tally

    def check(self, phase: str, sent: int) -> float:
        """Every request of the phase arrived and was answered 200; the stand-in's CPU seconds."""
        seen = self.tally()
        cpu, self.cpu = seen["cpu"] - self.cpu, seen["cpu"]
        self.received += seen["received"]
        self.connections += seen["connections"]
        if seen["failed"] or seen["received"] != sent:
            raise BenchFailure(f"{phase}: the stand-in received {seen['received']} of {sent} "
                               f"requests, answered non-200: {dict(seen['failed']) or 'none'}")
        return cpu

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send("stop")
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        self.conn.close()

"""The APNs stand-in (tests/support/apns_standin.py) in a process of its own, for the push mode.

Its own process so the harness's threads (supervisor, killer, sender) and the stand-in's event
loop do not share a GIL, as bench/push_standin.py does it. It records, besides what the stand-in
records per request (token, status, payload, arrival time, connection number), when each
connection ended, whether the client said GOAWAY first, and the client's port: the harness maps
ports to worker processes while they live, so a duplicate can be traced to the process that sent
its first copy and to the kill that ended it.

    python -m tests.chaos.standin DIR     # prints one JSON line (endpoint, key, CA), then reads
                                          # commands from stdin: "dump PATH" (answers "ok"), "stop"
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def serve(directory: Path) -> None:
    from tasks.push.apns.frames import GOAWAY
    from tests.support import apns_standin
    from tests.support.apns_standin import ApnsStandin, make_key

    ended: dict[int, list[Any]] = {}  # connection number -> [port, ended at, said GOAWAY]
    lock = threading.Lock()  # the server's thread writes it, this one reads it

    class Tracked(apns_standin._Connection):
        """The stand-in's connection, noting how it ended."""

        goaway = False

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            peer = transport.get_extra_info("peername") or ("", 0)
            with lock:
                ended[self.number] = [peer[1], None, False]

        def _frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
            if kind == GOAWAY:
                self.goaway = True
            super()._frame(kind, flags, stream_id, payload)

        def connection_lost(self, exc: Exception | None) -> None:
            super().connection_lost(exc)
            with lock:
                if self.number in ended:
                    ended[self.number][1:] = [time.time(), self.goaway]

    # _serve builds its connections from the module's name for the class: ours, in this process.
    apns_standin._Connection = Tracked  # type: ignore[misc]
    standin = ApnsStandin(directory).start()
    key, public = make_key(directory)
    standin.register(key.key_id, key.team_id, public, {key.topic})
    print(json.dumps({"pid": os.getpid(), "endpoint": standin.endpoint, "port": standin.port,
                      "ca_file": str(standin.ca_pem_path), "key_id": key.key_id,
                      "team_id": key.team_id, "topic": key.topic,
                      "key_path": str(key.p8_path)}), flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words or words[0] != "dump":
            break
        requests = [[r.token, r.status, r.reason, (r.payload or {}).get("chaos"), r.at,
                     r.connection, r.headers.get("apns-collapse-id")]
                    for r in standin.received()]
        with lock:
            connections = {n: list(v) for n, v in ended.items()}
        Path(words[1]).write_text(json.dumps({"requests": requests, "connections": connections}))
        print("ok", flush=True)
    standin.stop()


class StandinProcess:
    """The harness's handle on the stand-in's process."""

    def __init__(self, directory: Path, timeout: float = 60.0) -> None:
        self.directory = directory
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.chaos.standin", str(directory)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     cwd=REPO)
        self.info: dict[str, Any] = json.loads(self._line(timeout))

    def _line(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.close()
            raise RuntimeError("the APNs stand-in's process did not answer")
        return line

    def app_env(self) -> dict[str, str]:
        """FARM_* variables naming the stand-in as the app's APNs endpoint."""
        i = self.info
        return {"FARM_APNS_APPS": "|".join((i["topic"], i["key_id"], i["team_id"],
                                            i["key_path"], i["endpoint"])),
                "FARM_APNS_CA_FILE": i["ca_file"]}

    def dump(self, timeout: float = 60.0) -> dict[str, Any]:
        """What it received: ``requests`` as [token, status, reason, chaos id, at, connection,
        apns-collapse-id],
        ``connections`` as number -> [client port, ended at or None, said GOAWAY]."""
        assert self.proc.stdin is not None
        path = self.directory / "standin-records.json"
        self.proc.stdin.write(f"dump {path}\n")
        self.proc.stdin.flush()
        self._line(timeout)
        records: dict[str, Any] = json.loads(path.read_text())
        return records

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write("stop\n")
                self.proc.stdin.flush()
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


if __name__ == "__main__":
    serve(Path(sys.argv[1]))

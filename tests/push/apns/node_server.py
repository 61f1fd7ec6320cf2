"""The Python side of node_h2_server.js: Node's built-in ``http2`` module (nghttp2) as a
scriptable HTTP/2-over-TLS server, a second implementation independent of ours and of ``h2``.

``NodeH2Server(ca, directory, **config)`` starts ``node node_h2_server.js CONFIG`` on a free port
(the server listens on port 0 and says which), with a certificate from the tests' trustme CA. A
thread reads the JSON events it prints (requests as nghttp2 decoded them, answers, resets,
sessions, GOAWAYs); ``command`` writes control lines to its stdin. ``node_binary()`` is the node
found on PATH, or None.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trustme

SCRIPT = Path(__file__).with_name("node_h2_server.js")
Event = dict[str, Any]


def node_binary() -> str | None:
    return shutil.which("node")


class NodeH2Server:
    def __init__(self, ca: trustme.CA, directory: Path, **config: Any) -> None:
        node = node_binary()
        assert node is not None, "node not found on PATH"
        cert = ca.issue_cert("127.0.0.1")
        key_path, cert_path = directory / "node-key.pem", directory / "node-cert.pem"
        cert.private_key_pem.write_to_path(str(key_path))
        cert.cert_chain_pems[0].write_to_path(str(cert_path))
        config = {"key": str(key_path), "cert": str(cert_path), **config}
        self.proc = subprocess.Popen([node, str(SCRIPT), json.dumps(config)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, bufsize=1)
        self.events: list[Event] = []
        self.changed = threading.Condition()
        self.seq = 0
        self.reader = threading.Thread(target=self._read, name="node-h2-events", daemon=True)
        self.reader.start()
        (listening,) = self.wait(lambda: self.of("listening"), "the server to listen", 15.0)
        self.port: int = listening["port"]

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self.changed:
                self.events.append(json.loads(line))
                self.changed.notify_all()
        with self.changed:
            self.changed.notify_all()

    # -- records --------------------------------------------------------------------------------

    def of(self, kind: str) -> list[Event]:
        with self.changed:
            return [e for e in self.events if e["ev"] == kind]

    def requests(self, action: str | None = None) -> list[Event]:
        return [e for e in self.of("request") if action is None or e["action"] == action]

    def delivered(self) -> list[str]:
        """Device tokens answered 200, one entry per delivery."""
        answered = {(e["session"], e["stream"]) for e in self.of("answered")
                    if e["status"] == 200}
        return [e["headers"][":path"].rsplit("/", 1)[1] for e in self.of("request")
                if (e["session"], e["stream"]) in answered]

    @staticmethod
    def body(event: Event) -> bytes:
        return base64.b64decode(event["body"])

    def wait(self, predicate: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                value = predicate()
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    stderr = self.proc.stderr.read() if self.proc.poll() is not None and \
                        self.proc.stderr else ""
                    raise AssertionError(f"timed out waiting for {what} from the node server"
                                         + (f"; it exited: {stderr}" if stderr else ""))
                self.changed.wait(min(left, 0.05))

    # -- control --------------------------------------------------------------------------------

    def command(self, cmd: str, **fields: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"cmd": cmd, **fields}) + "\n")
        self.proc.stdin.flush()

    def sync(self) -> None:
        """Every event before now has been read."""
        self.seq += 1
        seq = self.seq
        self.command("sync", seq=seq)
        self.wait(lambda: any(e.get("seq") == seq for e in self.of("pong")), "pong")

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            try:
                self.proc.stdin.close()
                self.proc.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(5)
        self.reader.join(5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()

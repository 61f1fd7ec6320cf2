"""What the Redis broker accepted, read back from its append-only file (the "sent" source of the
audit on Redis).

The broker's AOF holds every write it acknowledged (synced before the answer, and never rewritten
here: it is the whole history, across a crash and restart). Every LPUSH/RPUSH of a Celery message
onto a queue key is a message sent: by the web tier (the harness), by tasks (fan-out chunks,
follow-ons, retries: a retry keeps its task id), by the ledger sweep and by dead-letter replays
(new ids). A restore pushes the same message (same id) again: counted as a redelivery.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

from tests.chaos.audit import Sent
from tests.chaos.broker import PRIORITY_SEP


def aof_files(directory: Path) -> list[Path]:
    """The incremental files of a multi-part AOF, in order (the base is empty: never rewritten)."""
    manifest = next((directory / "appendonlydir").glob("*.manifest"))
    files = []
    for line in manifest.read_text().splitlines():
        parts = line.split()
        info = dict(zip(parts[::2], parts[1::2], strict=False))
        if info.get("type") == "i":
            files.append(directory / "appendonlydir" / info["file"])
    return files


def commands(data: bytes) -> list[list[bytes]]:
    """RESP arrays of an AOF; a command cut short at the end (a crash mid-write) is left out."""
    out: list[list[bytes]] = []
    pos, n = 0, len(data)
    try:
        while pos < n:
            if data[pos:pos + 1] == b"#":  # an annotation line
                pos = data.index(b"\r\n", pos) + 2
                continue
            eol = data.index(b"\r\n", pos)
            argc = int(data[pos + 1:eol])
            pos = eol + 2
            args = []
            for _ in range(argc):
                eol = data.index(b"\r\n", pos)
                size = int(data[pos + 1:eol])
                start = eol + 2
                if start + size + 2 > n:
                    raise ValueError("truncated")
                args.append(data[start:start + size])
                pos = start + size + 2
            out.append(args)
    except ValueError:
        pass
    return out


def sent_messages(broker_dir: Path, queues: tuple[str, ...], db: int = 0) -> dict[str, Sent]:
    sent: dict[str, Sent] = {}
    names = {q.encode() for q in queues}
    current = 0
    for path in aof_files(broker_dir):
        for cmd in commands(path.read_bytes()):
            verb = cmd[0].upper()
            if verb == b"SELECT":
                current = int(cmd[1])
                continue
            if verb not in (b"LPUSH", b"RPUSH") or current != db:
                continue
            queue = cmd[1].split(PRIORITY_SEP.encode())[0]
            if queue not in names:
                continue
            for raw in cmd[2:]:
                message = json.loads(raw)
                headers = message["headers"]
                if headers["id"] in sent:
                    sent[headers["id"]].redelivered += 1
                    continue
                _args, kwargs, _embed = json.loads(base64.b64decode(message["body"]))
                sent[headers["id"]] = Sent(headers["task"], queue.decode(), kwargs)
    return sent

"""Tasks lost: every message the broker accepted against every task that ran to ok.

Sent: read back from the broker's append-only file, which holds every write the broker
acknowledged (synced before the answer; never rewritten here, so it is the whole history, across
a crash and restart). Every LPUSH/RPUSH of a Celery message onto a queue key is a message sent:
by the web tier (the harness), by tasks (fan-out chunks, follow-ons, retries: a retry keeps its
task id), by the ledger sweep and by dead-letter replays (new ids). Restores put the same message
(same id) back.

Ran: each task logs one timing line, ``task=NAME id=ID status=OUTCOME ...``, before its message is
acked (tasks/core/base.py), to the worker's log file, which every process of the worker appends
to. A message whose id never logged ``status=ok`` and was not dead-lettered (and so replayed
under a new id, which must run ok itself) is a task lost.
"""

from __future__ import annotations

import base64
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.chaos.broker import PRIORITY_SEP

LINE = re.compile(rb"task=(\S+) id=(\S+) status=(\w+)")


@dataclass
class Sent:
    task: str
    queue: str
    kwargs: dict[str, Any]
    pushes: int = 1  # onto a queue: the first publish, and each restore of the same message


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
                    sent[headers["id"]].pushes += 1
                    continue
                _args, kwargs, _embed = json.loads(base64.b64decode(message["body"]))
                sent[headers["id"]] = Sent(headers["task"], queue.decode(), kwargs)
    return sent


def outcomes(log_dir: Path) -> dict[str, Counter[str]]:
    """Task id -> how many times it ended each way (ok, retry, deadletter, interrupted, ...)."""
    out: dict[str, Counter[str]] = {}
    for path in sorted(log_dir.glob("*.log")):
        for _task, task_id, status in LINE.findall(path.read_bytes()):
            out.setdefault(task_id.decode(), Counter())[status.decode()] += 1
    return out


@dataclass
class Audit:
    sent: int = 0
    by_task: Counter[str] = field(default_factory=Counter)
    ran_ok: int = 0
    ran_twice: int = 0  # ok more than once: redelivered after it had run (no ack in between)
    restored: int = 0  # pushed onto a queue again (the same message, after its worker died)
    deadlettered: int = 0
    pending: int = 0  # still held by the broker at the end (not drained)
    lost: list[tuple[str, Sent]] = field(default_factory=list)

    def lost_by_task(self) -> Counter[str]:
        return Counter(s.task for _, s in self.lost)


def audit(broker_dir: Path, log_dir: Path, queues: tuple[str, ...], deadlettered: set[str],
          pending: set[str]) -> Audit:
    sent = sent_messages(broker_dir, queues)
    ran = outcomes(log_dir)
    out = Audit(sent=len(sent), by_task=Counter(s.task for s in sent.values()))
    for task_id, message in sent.items():
        out.restored += message.pushes > 1
        ends = ran.get(task_id, Counter())
        if ends["ok"]:
            out.ran_ok += 1
            out.ran_twice += ends["ok"] > 1
        elif task_id in deadlettered:
            out.deadlettered += 1
        elif task_id in pending:
            out.pending += 1
        else:
            out.lost.append((task_id, message))
    return out

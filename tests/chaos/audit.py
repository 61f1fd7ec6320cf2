"""Tasks lost: every message the broker accepted against every task that ran to ok.

Sent: the broker's own history of what it accepted, whichever broker: the Redis broker's
append-only file (aof.py), or RabbitMQ's firehose, every publish into the mode's vhost copied to a
queue of the harness's own (firehose.py). Either gives task id -> :class:`Sent`.

Ran: each task logs one timing line, ``task=NAME id=ID status=OUTCOME ...``, before its message is
acked (tasks/core/base.py), to the worker's log file, which every process of the worker appends
to. A message whose id never logged ``status=ok`` and was not dead-lettered (and so replayed
under a new id, which must run ok itself) is a task lost.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LINE = re.compile(rb"task=(\S+) id=(\S+) status=(\w+)")
RECEIVED = re.compile(rb"Task (\S+)\[([^\]\s]+)\] received")  # Celery's line at each delivery


@dataclass
class Sent:
    task: str
    queue: str
    kwargs: dict[str, Any]
    redelivered: int = 0  # handed out again (its worker stopped or died holding it)


def outcomes(log_dir: Path) -> dict[str, Counter[str]]:
    """Task id -> how many times it ended each way (ok, retry, deadletter, interrupted, ...), and
    how many times a worker received it (``received``)."""
    out: dict[str, Counter[str]] = {}
    for path in sorted(log_dir.glob("*.log")):
        data = path.read_bytes()
        for _task, task_id, status in LINE.findall(data):
            out.setdefault(task_id.decode(), Counter())[status.decode()] += 1
        for _task, task_id in RECEIVED.findall(data):
            out.setdefault(task_id.decode(), Counter())["received"] += 1
    return out


@dataclass
class Audit:
    sent: int = 0
    by_task: Counter[str] = field(default_factory=Counter)
    ran_ok: int = 0
    ran_twice: int = 0  # ok more than once: redelivered after it had run (no ack in between)
    restored: int = 0  # handed out again (the same message, after its worker died or stopped)
    deadlettered: int = 0
    pending: int = 0  # still held by the broker at the end (not drained)
    lost: list[tuple[str, Sent]] = field(default_factory=list)
    # each dead letter's history: task, id, times received by a worker, times it ran to ok
    dead: list[tuple[str, str, int, int]] = field(default_factory=list)

    def lost_by_task(self) -> Counter[str]:
        return Counter(s.task for _, s in self.lost)


def audit(sent: dict[str, Sent], log_dir: Path, deadlettered: set[str],
          pending: set[str]) -> Audit:
    ran = outcomes(log_dir)
    out = Audit(sent=len(sent), by_task=Counter(s.task for s in sent.values()))
    for task_id, message in sent.items():
        out.restored += message.redelivered > 0
        ends = ran.get(task_id, Counter())
        if task_id in deadlettered:
            out.dead.append((message.task, task_id, ends["received"], ends["ok"]))
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

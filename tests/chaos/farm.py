"""A small farm for one chaos mode: its own servers (the broker, either kind: broker.py, and a
data server), worker slots kept filled by a supervisor loop (as supervisord keeps its programs),
a killer, and the broker's backlog.

The data server (feeds, records, dead letters, counters) is never killed and keeps nothing on
disk.

Nothing here imports the farm's settings or Celery app: a mode's process sets its FARM_*
variables first (see modes.py).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import statistics
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.chaos.broker import Broker, wait_drained
from workers.embedded_redis import EmbeddedRedis
from workers.launcher import READY_MARK, WorkerProcess

TICK = 0.1  # the supervisor's poll: a dead worker is replaced within about this long


@dataclass(frozen=True)
class Sizes:
    users: int
    owners: int
    edges: int
    items: int  # posts, photos or notifications sent during the kills
    chunk: int = 200  # FARM_FEED_CHUNK_SIZE
    kill_seconds: float = 45.0

    def check(self) -> None:
        if self.owners and (self.owners >= self.users
                            or self.edges > self.owners * (self.users - 1)):
            raise ValueError(f"impossible graph: {self}")


@dataclass(frozen=True)
class Event:
    """Something the harness did to the farm: a kill, a warm stop, a restart, a broker crash."""

    at: float  # time.time()
    kind: str  # child | parent | group | term | cut | restart | broker
    node: str
    pid: int
    profile: str


@dataclass
class Slot:
    """One supervised program: a worker profile at a width, restarted whenever it dies."""

    name: str
    profile: str
    concurrency: int
    killable: bool = True
    generation: int = 0
    worker: WorkerProcess | None = None
    term_at: float | None = None  # monotonic time of the SIGTERM of a warm stop in progress
    history: list[WorkerProcess] = field(default_factory=list)


def processes() -> Iterator[tuple[int, int, int]]:
    """(pid, parent pid, process group) of every live process, from /proc (zombies left out)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    state, ppid, pgrp = f.read().rsplit(")", 1)[1].split()[:3]
            except (OSError, ValueError):
                continue
            if state != "Z":
                yield int(entry), int(ppid), int(pgrp)


def children(pid: int) -> list[int]:
    """Live child processes of ``pid``: a prefork parent's pool."""
    return [p for p, ppid, _ in processes() if ppid == pid]


def strays(pgid: int) -> list[int]:
    """Worker processes still alive in the group of a worker parent that is gone (a parent
    killed alone leaves its pool children to notice and exit). Only `farm worker` processes:
    once a group is empty its number may be some other program's."""
    out = []
    for p, _, pgrp in processes():
        if pgrp == pgid:
            try:
                with open(f"/proc/{p}/cmdline", "rb") as f:
                    if b"workers.cli" in f.read():
                        out.append(p)
            except OSError:
                continue
    return out


def is_ready(worker: WorkerProcess) -> bool:
    """The worker logged that it consumes (read from the head of its log: the line comes early,
    and a busy worker's log grows by megabytes)."""
    try:
        with open(worker.log_path, "rb") as f:
            return READY_MARK.encode() in f.read(256 * 1024)
    except FileNotFoundError:
        return False


class Farm:
    def __init__(self, root: Path, broker: Broker, slots: list[Slot] | None = None,
                 grace: float = 10.0) -> None:
        self.root = root
        self.logs = root / "logs"
        self.slots = slots or []
        self.grace = grace  # supervisord's stopwaitsecs: a warm stop is cut short after it
        self.broker = broker
        self.data = EmbeddedRedis()
        self.events: list[Event] = []
        self.stops: list[tuple[str, float, bool]] = []  # node, seconds, cut short
        self.lock = threading.Lock()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self.env: dict[str, str] = {}

    # -- servers --------------------------------------------------------------------------------

    def start_servers(self) -> dict[str, str]:
        url = self.broker.start()
        self.data.start()
        return {"FARM_BROKER_URL": url, "FARM_REDIS_URL": self.data.url(1)}

    def crash_broker(self) -> dict[str, float]:
        """The broker's blow (broker.py: a Redis server SIGKILLed and started again from its
        AOF; a RabbitMQ vhost's every connection closed). From the main thread: a Redis server
        dies with the thread that started it."""
        self.record("broker", "broker", 0, self.broker.kind)
        return self.broker.blow()

    # -- workers --------------------------------------------------------------------------------

    def start_workers(self, env: dict[str, str], timeout: float = 120.0) -> None:
        self.env = env
        for slot in self.slots:
            self._spawn(slot)
        deadline = time.monotonic() + timeout
        for slot in self.slots:
            assert slot.worker is not None
            slot.worker.wait_ready(max(1.0, deadline - time.monotonic()))

    def _spawn(self, slot: Slot) -> None:
        slot.generation += 1
        node = f"{slot.name}-g{slot.generation}"
        worker = WorkerProcess(slot.profile, self.logs / f"{node}.log", self.env,
                               concurrency=slot.concurrency, node=node).start()
        slot.worker, slot.term_at = worker, None
        slot.history.append(worker)

    def supervise(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="chaos-supervisor", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._done.wait(TICK):
            with self.lock:
                for slot in self.slots:
                    self._tend(slot)

    def _tend(self, slot: Slot) -> None:
        w = slot.worker
        if w is None or w.proc is None:
            return
        if w.proc.poll() is None:
            if slot.term_at is not None and time.monotonic() - slot.term_at > self.grace:
                # stopwaitsecs passed: supervisord SIGKILLs the whole group (killasgroup)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(w.pid, signal.SIGKILL)
                self.stops.append((w.node, time.monotonic() - slot.term_at, True))
                self.record("cut", w.node, w.pid, slot.profile)
                slot.term_at = None
                w.proc.wait()
            else:
                return
        elif slot.term_at is not None:
            self.stops.append((w.node, time.monotonic() - slot.term_at, False))
        self._spawn(slot)
        assert slot.worker is not None
        self.record("restart", slot.worker.node, slot.worker.pid, slot.profile)

    def record(self, kind: str, node: str, pid: int, profile: str) -> Event:
        event = Event(time.time(), kind, node, pid, profile)
        self.events.append(event)
        return event

    def strike(self, rng: random.Random, kinds: Sequence[str]) -> Event | None:
        """One blow to a random killable worker that consumes: ``child`` (SIGKILL a pool
        child), ``parent`` (SIGKILL the parent alone: its children are left to die on their
        own), ``group``
        (SIGKILL the process group: a node lost) or ``term`` (SIGTERM the parent: a warm stop,
        as supervisord does on deploy; cut short with SIGKILL of the group after the grace)."""
        with self.lock:
            # Workers that consume: one still booting holds nothing, a blow to it tests nothing.
            live = [s for s in self.slots if s.killable and s.worker is not None
                    and s.worker.alive() and s.term_at is None and is_ready(s.worker)]
            if not live:
                return None
            slot = rng.choice(live)
            kind = rng.choice(kinds)
            w = slot.worker
            assert w is not None
            try:
                if kind == "child":
                    kids = sorted(children(w.pid))
                    if not kids:
                        return None  # still starting: no pool yet
                    victim = rng.choice(kids)
                    os.kill(victim, signal.SIGKILL)
                    return self.record("child", w.node, victim, slot.profile)
                if kind == "parent":
                    os.kill(w.pid, signal.SIGKILL)
                elif kind == "group":
                    os.killpg(w.pid, signal.SIGKILL)
                elif kind == "term":
                    os.kill(w.pid, signal.SIGTERM)
                    slot.term_at = time.monotonic()
                else:
                    raise ValueError(kind)
            except ProcessLookupError:
                return None
            return self.record(kind, w.node, w.pid, slot.profile)

    def wait_all_ready(self, timeout: float) -> bool:
        """Every slot's current worker up and consuming (after the kills, before draining)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                ready = all(s.worker is not None and s.worker.alive() and s.term_at is None
                            and is_ready(s.worker) for s in self.slots)
            if ready:
                return True
            time.sleep(0.2)
        return False

    def orphans(self) -> int:
        """Processes still alive in the groups of workers that are gone."""
        return sum(len(strays(w.pid)) for s in self.slots for w in s.history
                   if w.proc is not None and w.proc.poll() is not None)

    def stop_summary(self) -> dict[str, float]:
        if not self.stops:
            return {"stops": 0}
        times = [t for _, t, _ in self.stops]
        return {"stops": len(times), "min": min(times), "median": statistics.median(times),
                "max": max(times), "cut": sum(cut for *_, cut in self.stops)}

    def teardown(self) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join(10)
        for slot in self.slots:
            for w in slot.history:
                if w.proc is None:
                    continue
                if w.proc.poll() is None:  # its own group, led by it: ours for sure
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(w.pid, signal.SIGKILL)
                for pid in strays(w.pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                w.proc.wait()
        try:
            self.broker.stop()
        finally:
            self.data.stop()

    def wait_drained(self, timeout: float) -> dict[str, int]:
        if self.broker.kind == "amqp":  # each look costs a rabbitmqctl run once queues are empty
            return wait_drained(self.broker.backlog, timeout, settle=2.0, poll=0.25)
        return wait_drained(self.broker.backlog, timeout)

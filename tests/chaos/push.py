"""The push mode: devices registered for users, notify_users batches sent while io workers are
SIGKILLed, against the APNs stand-in in its own process.

Each notification carries its number in its custom data (``chaos``), so every request the
stand-in answered 200 is a delivery of (notification, device). Expected: each device of each
notified user exactly once. A duplicate is in the documented window when the process that sent
its first copy was SIGKILLed after Apple's 200 arrived and before the second copy: it died
between the 200 and the sent-marker (a marker written would have made the redelivery skip the
device). Which process sent a copy: the stand-in notes each connection's client port, and the
harness maps ports to worker processes while they live (from /proc); if a connection was too
short-lived to be seen, the kill whose time matches the connection's end is taken instead.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import defaultdict
from itertools import pairwise
from typing import Any, NamedTuple

from config.settings import get_settings
from tasks import enqueue
from tasks.core.redis import data_redis
from tasks.push.devices import DeviceRegistry
from tests.chaos.farm import Event, Farm, Sizes, Slot
from tests.chaos.scenarios import Scenario
from tests.chaos.standin import StandinProcess

MATCH_SECONDS = 1.0  # a connection ending this soon after a kill of an io worker is its


def socket_ports(pid: int, remote_port: int) -> set[int]:
    """Local ports of ``pid``'s TCP connections to ``remote_port`` on loopback."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
        with open(f"/proc/{pid}/net/tcp") as f:
            rows = f.read().splitlines()[1:]
    except OSError:
        return set()
    ports = set()
    for row in rows:
        cols = row.split()
        if cols[9] in inodes and int(cols[2].split(":")[1], 16) == remote_port:
            ports.add(int(cols[1].split(":")[1], 16))
    return ports


class PushScenario(Scenario):
    kinds = ("parent",)  # an io worker is one process (a thread pool): SIGKILL ends all of it

    def __init__(self, sizes: Sizes, rng: random.Random) -> None:
        super().__init__(sizes, rng)
        self.devices: dict[int, list[str]] = {}  # user -> tokens
        self.sent: dict[int, list[int]] = {}  # notification number -> users
        self.standin: StandinProcess | None = None
        self.ports: dict[int, list[tuple[float, str, int]]] = {}  # port -> (seen, node, pid)
        self.farm: Farm | None = None
        self._done = threading.Event()

    def slots(self) -> list[Slot]:
        return [Slot("io1", "io", 4), Slot("io2", "io", 4)]

    def start_standin(self, farm: Farm) -> dict[str, str]:
        """Before the workers: they need its address and CA in their environment."""
        self.standin = StandinProcess(farm.root)
        return {**self.standin.app_env(), "FARM_APNS_TIMEOUT": "2"}

    def setup(self, farm: Farm) -> None:
        self.farm = farm
        registry = DeviceRegistry(data_redis(), get_settings())
        topic = self.standin.info["topic"] if self.standin else ""
        for uid in range(1, self.sizes.users + 1):
            tokens = [f"{uid:016x}{k:048x}" for k in range(self.rng.choice((1, 1, 2, 3)))]
            self.devices[uid] = tokens
            for token in tokens:
                registry.register(uid, topic, token, when=1000.0)
        threading.Thread(target=self._sample, name="chaos-ports", daemon=True).start()

    def _sample(self) -> None:
        """Which worker process holds which connection to the stand-in, while they live."""
        assert self.farm is not None and self.standin is not None
        port = int(self.standin.info["port"])
        while not self._done.wait(0.1):
            for slot in self.farm.slots:
                w = slot.worker
                if w is not None and w.alive():
                    now = time.time()
                    for local in socket_ports(w.pid, port):
                        seen = self.ports.setdefault(local, [])
                        if not seen or seen[-1][2] != w.pid:
                            seen.append((now, w.node, w.pid))

    def send(self, n: int) -> None:
        # No broker crash in this mode: a send is never refused, so never repeated (a repeat
        # would be a second notification, with an id of its own, and count as duplicates).
        users = self.rng.sample(range(1, self.sizes.users + 1), min(100, self.sizes.users))
        self.sent[n] = users
        enqueue.notify_users(users, f"chaos #{n}", data={"chaos": n})

    def close(self) -> None:
        self._done.set()
        if self.standin is not None:
            self.standin.close()

    def check(self) -> dict[str, Any]:
        assert self.standin is not None and self.farm is not None
        records = self.standin.dump()
        connections = {int(n): v for n, v in records["connections"].items()}
        got: dict[tuple[int, str], list[Copy]] = defaultdict(list)
        refused = 0
        for token, status, _reason, n, at, conn, collapse in records["requests"]:
            if status == 200:
                got[(n, token)].append(Copy(at, conn, collapse))
            else:
                refused += 1
        want = {(n, t) for n, users in self.sent.items() for u in users for t in self.devices[u]}
        lost = sorted(want - got.keys())
        extra = sorted(got.keys() - want)
        kills = [e for e in self.farm.events if e.kind in ("parent", "group")]
        groups: dict[tuple[Any, ...], list[tuple[str, Copy, Copy]]] = defaultdict(list)
        for (n, token), copies in sorted(got.items()):
            if len(copies) > 1:
                first, second = sorted(copies)[:2]
                key = (n, first.conn, second.conn, *self._explain(sorted(copies), connections,
                                                                    kills))
                groups[key].append((device_name(token), first, second))
        dups = sum(map(len, groups.values()))
        explained = sum(len(v) for k, v in groups.items() if k[4] is not None)
        lines = [duplicate_line(key, members)
                 for key, members in sorted(groups.items(), key=lambda kv: kv[0][:4])]
        return {"notifications": len(self.sent), "pushes_expected": len(want),
                "pushes_lost": len(lost), "pushes_duplicated": dups,
                "dups_in_window": explained, "dups_unexplained": dups - explained,
                "pushes_extra": len(extra), "pushes_refused": refused, "duplicates": lines,
                "examples": [f"lost: notification {n} device {device_name(t)}"
                             for n, t in lost[:8]]}

    def _owner(self, port: int, at: float) -> tuple[str, int] | None:
        """The worker process that held a client port around ``at``."""
        seen = self.ports.get(port, [])
        if not seen:
            return None
        _, node, pid = min(seen, key=lambda s: abs(s[0] - at))
        return node, pid

    def _explain(self, copies: list[Copy], connections: dict[int, list[Any]],
                 kills: list[Event]) -> tuple[str, Event | None]:
        """Who sent the first copy, and the kill that explains the second (None: unexplained,
        with the reason in the string). Every copy but the last must have a sender killed
        before the next copy arrived, on another connection, with one apns-collapse-id."""
        found: list[tuple[str, Event]] = []
        for copy, after in pairwise(copies):
            sender, kill = self._killed_sender(copy, after, connections, kills)
            if kill is None:
                return sender, None
            found.append((sender, kill))
        collapse = {c.collapse for c in copies}
        if len(collapse) != 1 or None in collapse:
            return f"UNEXPLAINED: apns-collapse-id {sorted(map(str, collapse))}", None
        if len(copies) > 2:  # named in the line; the first kill is the one shown
            return " then ".join(s for s, _ in found), found[0][1]
        return found[0]

    def _killed_sender(self, copy: Copy, after: Copy, connections: dict[int, list[Any]],
                       kills: list[Event]) -> tuple[str, Event | None]:
        port, ended, goaway = connections.get(copy.conn, [0, None, False])
        owner = self._owner(port, copy.at)
        if owner is not None:
            node, pid = owner  # a pid is killed once: any kill of it before the next copy
            matches = [k for k in kills if k.pid == pid and k.at <= after.at]
        else:  # too short-lived to be sampled: the kill that ended its connection
            node, pid = "?", 0
            matches = [k for k in kills if ended is not None and 0 <= ended - k.at
                       <= MATCH_SECONDS and k.at <= after.at]
        sender = f"{node} (pid {pid})" if pid else f"an unsampled connection (port {port})"
        if not matches or copy.conn == after.conn or goaway:
            return (f"UNEXPLAINED: sender {sender} on conn {copy.conn} "
                    f"{'not killed before the next copy' if not matches else 'still alive'}"
                    f"{', said GOAWAY' if goaway else ''}; next copy on conn {after.conn}"), None
        return sender, matches[0]


class Copy(NamedTuple):
    at: float  # when the stand-in answered it 200
    conn: int  # the stand-in's connection number
    collapse: str | None  # its apns-collapse-id


def device_name(token: str) -> str:
    """u{user}/{device}: the tokens are made from both (see PushScenario.setup)."""
    return f"u{int(token[:16], 16)}/{int(token[16:], 16)}"


def clock(at: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at)) + f".{int(at * 1000) % 1000:03d}"


def duplicate_line(key: tuple[Any, ...], members: list[tuple[str, Copy, Copy]]) -> str:
    """One line per notification, sender and kill: every device delivered twice, listed."""
    n, conn, again, sender, kill = key
    firsts, seconds = [m[1].at for m in members], [m[2].at for m in members]
    head = (f"  duplicated: notification {n}, {len(members)} device(s) twice: first copies "
            f"{clock(min(firsts))}-{clock(max(firsts))} on conn {conn} from {sender}, again "
            f"{clock(min(seconds))}-{clock(max(seconds))} on conn {again}")
    if kill is None:
        return f"{head}; {sender}; devices {' '.join(m[0] for m in members)}"
    answered = [m for m in members if m[1].at <= kill.at]
    flying = [m for m in members if m[1].at > kill.at]
    return (f"{head} (its redelivery); the sender was SIGKILLed at {clock(kill.at)}: "
            f"{len(answered)} answered 200 before the kill (in the window between Apple's 200 "
            f"and the sent-marker), {len(flying)} still in flight, answered after the kill "
            f"(outcome unknown to the farm); each pair with one apns-collapse-id (the device "
            f"shows one); devices " + " ".join(
                f"{m[0]}({(m[1].at - kill.at) * 1000:+.0f}ms)" for m in members))

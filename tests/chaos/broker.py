"""The mode's broker, either kind, behind one interface (:class:`Broker`): started for the mode
and gone at its end, what it still holds (the backlog; drained is empty everywhere, for a while),
what it accepted (the audit's "sent"), and the blow the ``fanout-broker`` mode strikes it.

- :class:`RedisBroker` (here): a server of the mode's own whose append-only file is written and
  fsynced before it answers a write (``appendfsync always``). With ``everysec`` it answers before
  the write is on disk, and while a background fsync is slow it holds writes back from the file
  for up to 2 s, answering all the same: a server killed then comes back without writes it had
  acknowledged, the server's loss, not the farm's. The AOF is never rewritten either
  (``auto-aof-rewrite-percentage 0``): the whole history of what the broker accepted (aof.py).
  Its blow: SIGKILL, and started again in place from its AOF.
- ``AmqpBroker`` (rabbit.py): a vhost of the mode's own on the machine's RabbitMQ.

The Redis backlog counts every place a message can be: queued, unacked (running, prefetched, or
held by a dead worker until the visibility sweep), in a consumer's in-flight list (reliable
fetch's blocking wait, config/reliable_redis.py), or set aside as unparsable.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import redis

from config.queues import QUEUES
from workers.embedded_redis import EmbeddedRedis

if TYPE_CHECKING:
    from tests.chaos.audit import Sent

BROKERS = ("redis", "amqp")
PRIORITY_SEP = "\x06\x16"  # kombu's Redis transport: queue key for priority N is f"{q}{SEP}{N}"
PRIORITY_STEPS = (3, 6, 9)  # besides 0, the bare queue name
INFLIGHT_INDEX = "_kombu.inflight"  # config/reliable_redis.py's in-flight lists
UNPARSABLE = "_kombu.unparsable"
QUEUE_KEYS = [*QUEUES, *(f"{q}{PRIORITY_SEP}{p}" for q in QUEUES for p in PRIORITY_STEPS)]


class Broker(Protocol):
    kind: str
    url: str  # FARM_BROKER_URL, once started

    def start(self) -> str: ...
    def describe(self) -> str: ...
    def backlog(self) -> dict[str, int]: ...
    def pending_ids(self) -> set[str]: ...
    def sent(self) -> dict[str, Sent]: ...
    def blow(self) -> dict[str, float]: ...
    def stop(self) -> None: ...


def make_broker(kind: str, root: Path, mode: str) -> Broker:
    if kind == "amqp":
        from tests.chaos.rabbit import AmqpBroker

        return AmqpBroker(mode)
    if kind != "redis":
        raise ValueError(f"unknown broker {kind!r}, not one of {BROKERS}")
    return RedisBroker(root / "broker")


class RedisBroker:
    kind = "redis"

    def __init__(self, directory: Path) -> None:
        self.server = EmbeddedRedis(data_dir=directory, appendonly=True, appendfsync="always",
                                    extra_args=["--auto-aof-rewrite-percentage", "0"])
        self.directory = directory
        self.url = ""

    def start(self) -> str:
        self.server.start()
        self.url = self.server.url(0)
        return self.url

    def describe(self) -> str:
        return f"Redis :{self.server.port} (AOF always)"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=10)

    def backlog(self) -> dict[str, int]:
        return backlog(self.client())

    def pending_ids(self) -> set[str]:
        return pending_ids(self.client())

    def sent(self) -> dict[str, Sent]:
        from tests.chaos.aof import sent_messages

        return sent_messages(self.server.dir or self.directory, QUEUES)

    def blow(self) -> dict[str, float]:
        """SIGKILL the server and start it again in place (same port, same AOF): seconds down.
        From the main thread: the server dies with the thread that started it."""
        started = time.monotonic()
        self.server.kill()
        self.server.restart()
        return {"broker_down": time.monotonic() - started}

    def stop(self) -> None:
        self.server.stop()


def backlog(r: redis.Redis) -> dict[str, int]:
    """Where messages are held, and how many (nothing listed: none anywhere)."""
    pipe = r.pipeline(transaction=False)
    for key in QUEUE_KEYS:
        pipe.llen(key)
    pipe.hlen("unacked")
    pipe.llen(UNPARSABLE)
    pipe.hkeys(INFLIGHT_INDEX)
    *lengths, unacked, unparsable, inflight = pipe.execute()
    out = {k.split(PRIORITY_SEP)[0]: n for k, n in zip(QUEUE_KEYS, lengths, strict=True) if n}
    held = sum(int(r.llen(k)) for k in inflight)
    out.update({k: v for k, v in (("unacked", unacked), ("unparsable", unparsable),
                                  ("inflight", held)) if v})
    return out


def pending_ids(r: redis.Redis) -> set[str]:
    """Ids of the messages the broker still holds (for the audit, when not drained)."""
    keys = [*QUEUE_KEYS, *(k.decode() if isinstance(k, bytes) else str(k)
                           for k in r.hkeys(INFLIGHT_INDEX)), UNPARSABLE]
    raws: list[bytes | str] = []
    for key in keys:
        raws += r.lrange(key, 0, -1)
    ids = {json.loads(raw)["headers"]["id"] for raw in raws}
    ids |= {json.loads(raw)[0]["headers"]["id"] for raw in r.hvals("unacked")}
    return ids


def wait_drained(backlog: Callable[[], dict[str, int]], timeout: float, settle: float = 1.5,
                 poll: float = 0.1) -> dict[str, int]:
    """Until the broker holds nothing for ``settle`` seconds: {} when drained, else what is
    left when ``timeout`` runs out. A broker restarting in between just counts as not empty."""
    deadline = time.monotonic() + timeout
    empty_since: float | None = None
    left: dict[str, int] = {"unknown": 1}
    while time.monotonic() < deadline:
        try:
            left = backlog()
        except Exception as exc:  # restarting, or its connections just closed: not empty
            left = {f"broker unreachable ({type(exc).__name__})": 1}
        if left:
            empty_since = None
        elif empty_since is None:
            empty_since = time.monotonic()
        elif time.monotonic() - empty_since >= settle:
            return {}
        time.sleep(poll)
    return left

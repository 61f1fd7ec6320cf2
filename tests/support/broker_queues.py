"""The messages waiting on a farm queue, read off whichever broker the session runs on (Redis's
lists, or RabbitMQ's queues), oldest first. For tests that check what a task or the web tier sent
without running it."""

from __future__ import annotations

import base64
import json
import subprocess
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from kombu import Connection
from kombu import Queue as KombuQueue

Message = tuple[str, dict[str, Any]]  # task name, keyword arguments


def _short(envelopes: list[dict[str, Any]]) -> list[Message]:
    return [(e["task"], e["kwargs"]) for e in envelopes]


class BrokerQueues:
    """What both brokers answer: ``envelopes`` (task, id, args, kwargs) left on the queue,
    ``take`` off it for good, ``depth``."""

    def envelopes(self, queue: str) -> list[dict[str, Any]]:
        raise NotImplementedError

    def take_envelopes(self, queue: str, limit: int | None = None) -> list[dict[str, Any]]:
        raise NotImplementedError

    def depth(self, queue: str) -> int:
        raise NotImplementedError

    def held(self, queue: str) -> dict[str, int]:
        """What the broker still holds that could run: queued, unacked (taken by a consumer,
        not yet acked), in a consumer's in-flight list (Redis's reliable fetch)."""
        raise NotImplementedError

    def messages(self, queue: str) -> list[Message]:
        return _short(self.envelopes(queue))

    def take(self, queue: str, limit: int | None = None) -> list[Message]:
        """Taken off the queue for good, the oldest first: ``limit`` of them, or all."""
        return _short(self.take_envelopes(queue, limit))


class RedisQueues(BrokerQueues):
    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    @staticmethod
    def _decode(raw: bytes) -> dict[str, Any]:
        msg = json.loads(raw)
        args, kwargs, _ = json.loads(base64.b64decode(msg["body"]))
        return {"task": msg["headers"]["task"], "id": msg["headers"]["id"], "args": args,
                "kwargs": kwargs}

    def envelopes(self, queue: str) -> list[dict[str, Any]]:
        # kombu pushes on the left and pops on the right
        return [self._decode(raw) for raw in reversed(self.client.lrange(queue, 0, -1))]

    def take_envelopes(self, queue: str, limit: int | None = None) -> list[dict[str, Any]]:
        raws = self.client.rpop(queue, limit or 2**31)
        return [self._decode(raw) for raw in raws or []]  # type: ignore[union-attr]

    def depth(self, queue: str) -> int:
        return int(self.client.llen(queue))

    def held(self, queue: str) -> dict[str, int]:
        inflight = sum(int(self.client.llen(key))
                       for key in self.client.keys("_kombu.inflight.list.*"))
        return {"queued": self.depth(queue), "unacked": int(self.client.hlen("unacked")),
                "inflight": inflight}


class RabbitQueues(BrokerQueues):
    def __init__(self, url: str) -> None:
        self.url = url

    def _get(self, queue: str, ack: bool, limit: int | None = None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        with Connection(self.url, connect_timeout=10) as conn:
            channel: Any = conn.channel()
            try:
                bound = KombuQueue(queue, no_declare=True).bind(channel)
                while len(out) != limit and (msg := bound.get(no_ack=False,
                                                              accept=["json"])) is not None:
                    args, kwargs, _ = msg.decode()
                    out.append({"task": msg.headers["task"], "id": msg.headers["id"],
                                "args": args, "kwargs": kwargs})
                    if ack:
                        msg.ack()
            except conn.channel_errors:  # not declared yet: nothing was sent to it
                return []
            finally:
                channel.close()  # what was taken and not acked goes back to its queue
        return out

    def envelopes(self, queue: str) -> list[dict[str, Any]]:
        return self._get(queue, ack=False)

    def take_envelopes(self, queue: str, limit: int | None = None) -> list[dict[str, Any]]:
        return self._get(queue, ack=True, limit=limit)

    def depth(self, queue: str) -> int:
        from config.rabbitmq import queue_depths

        return queue_depths(self.url, [queue])[queue]

    def held(self, queue: str) -> dict[str, int]:
        """Ready messages by a passive declare (exact). Unacked ones: none without a consumer (a
        closed connection's go back to the queue), else rabbitmqctl's count, which for a quorum
        queue lags by up to the server's statistics interval (5 s by default)."""
        with Connection(self.url, connect_timeout=10) as conn:
            channel: Any = conn.channel()
            try:
                ok = channel.queue_declare(queue=queue, passive=True)
            except conn.channel_errors:  # not declared yet
                return {"queued": 0, "unacked": 0, "inflight": 0}
            finally:
                channel.close()
        unacked = 0
        if ok.consumer_count:
            vhost = unquote(urlsplit(self.url).path.lstrip("/"))
            out = subprocess.run(["rabbitmqctl", "list_queues", "-q", "--no-table-headers", "-p",
                                  vhost, "name", "messages_unacknowledged"], capture_output=True,
                                 text=True, timeout=60, check=True).stdout
            unacked = next((int(n) for name, n in map(str.split, out.splitlines())
                            if name == queue), 0)
        return {"queued": int(ok.message_count), "unacked": unacked, "inflight": 0}


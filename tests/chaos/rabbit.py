"""The mode's broker on RabbitMQ: a vhost of its own on the machine's server (127.0.0.1:5672,
guest/guest), created at the start and deleted at the end, whatever happened (modes.py tears
down on SIGTERM too). The server is shared: nothing here touches any other vhost.

- What it accepted: the firehose, on for the vhost only (firehose.py).
- Backlog: ready messages by passive declares on every farm queue, the dead-letter queue and the
  native delayed-delivery queues (exact: read from the queue's leader); once those are all empty,
  the messages workers hold unacked, from ``rabbitmqctl list_channels`` (the channels' own
  count, rows of this vhost only). Not ``list_queues``: for quorum queues its counts come from a
  metrics tick and lag up to about 5 s (measured on 3.10: 5 unacked showed as 0 for 4 s).
- ``pending_ids``: RabbitMQ shows no message without taking it off its queue (which would count
  a delivery against its limit), so none are named; held messages count as not drained, and
  the run fails on that anyway.
- The blow of ``fanout-broker``: the server is the machine's and may not be killed or stopped
  (other vhosts live on it), so every connection of the vhost is closed by the broker at once,
  mid-load (``rabbitmqctl close_all_connections --vhost``): the workers' and the web tier's
  alike, as a broker restart closes them. Each worker's unacked messages go back to their
  queues and every process has to reconnect.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from typing import Any

from kombu import Connection

from config.queues import QUEUES
from config.rabbitmq import DEADLETTER
from tests.chaos import firehose
from tests.chaos.audit import Sent
from tests.support.rabbitmq import HOST, PASSWORD, PORT, USER, ctl, unavailable

PREFIX = "photofarm-chaos"
DELAY_LEVELS = 28  # kombu's native delayed delivery: queues celery_delayed_0 .. _27
HELD = (*QUEUES, DEADLETTER, *(f"celery_delayed_{n}" for n in range(DELAY_LEVELS)))


def delete_leftovers() -> list[str]:
    """Delete the vhosts of chaos modes whose process is gone without its teardown (SIGKILLed):
    only names this module makes, ``photofarm-chaos-<mode>-<pid>``, with no such process."""
    names = ctl("list_vhosts", "-q", "name").stdout.split()
    gone = [v for v in names if (m := re.fullmatch(rf"{PREFIX}-[a-z-]+-(\d+)", v))
            and not os.path.exists(f"/proc/{m.group(1)}")]
    for vhost in gone:
        ctl("delete_vhost", vhost)
    return gone


class AmqpBroker:
    kind = "amqp"

    def __init__(self, mode: str) -> None:
        self.vhost = f"{PREFIX}-{mode}-{os.getpid()}"
        self.url = ""
        self._made = False
        self._conn: Connection | None = None
        self._channel: Any = None

    def start(self) -> str:
        why = unavailable()
        if why:
            raise RuntimeError(why)
        made = ctl("add_vhost", self.vhost)
        if made.returncode:
            raise RuntimeError(f"rabbitmqctl add_vhost failed (run as root?): "
                               f"{made.stderr.strip()[:200]}")
        self._made = True
        for args in (("set_permissions", "-p", self.vhost, USER, ".*", ".*", ".*"),
                     ("trace_on", "-p", self.vhost)):
            done = ctl(*args)
            if done.returncode:
                raise RuntimeError(f"rabbitmqctl {args[0]} failed: {done.stderr.strip()[:200]}")
        self.url = f"amqp://{USER}:{PASSWORD}@{HOST}:{PORT}/{self.vhost}"
        firehose.bind(self.url)
        return self.url

    def describe(self) -> str:
        return f"RabbitMQ vhost {self.vhost} (firehose on)"

    def backlog(self) -> dict[str, int]:
        out = {name: n for name, n in self.ready().items() if n}
        if not out:
            unacked = self.unacked()
            if unacked:
                out["unacked"] = unacked
        return out

    def ready(self) -> dict[str, int]:
        """Ready messages per queue (a queue not declared yet holds none)."""
        try:
            if self._conn is None:
                self._conn = Connection(self.url, connect_timeout=5)
                self._conn.ensure_connection(max_retries=1)
            out: dict[str, int] = {}
            for name in HELD:
                if self._channel is None:
                    self._channel = self._conn.channel()
                try:
                    out[name] = int(self._channel.queue_declare(name, passive=True).message_count)
                except self._conn.channel_errors:  # NOT_FOUND closes the channel
                    self._channel, out[name] = None, 0
            return out
        except Exception:  # its connection closed (the blow): a new one next time
            self._drop()
            raise

    def unacked(self) -> int:
        """Messages handed to consumers of this vhost and not yet acked."""
        rows = ctl("list_channels", "-q", "vhost", "messages_unacknowledged").stdout
        return sum(int(n) for vhost, _, n in (line.rpartition("\t") for line in rows.splitlines())
                   if vhost == self.vhost and n.isdigit())

    def pending_ids(self) -> set[str]:
        return set()

    def sent(self) -> dict[str, Sent]:
        return firehose.read(self.url)

    def blow(self) -> dict[str, float]:
        """Every connection of the vhost closed by the broker; how many, and how long it took."""
        assert self.vhost.startswith(PREFIX + "-")  # never another vhost, never --global
        started = time.monotonic()
        done = ctl("close_all_connections", "--vhost", self.vhost, "--limit", "100000",
                   "photofarm chaos: every connection of the vhost closed")
        if done.returncode:
            raise RuntimeError(f"close_all_connections failed: {done.stderr.strip()[:200]}")
        closed = re.search(r"Closed (\d+) connection", done.stdout)
        return {"connections_closed": int(closed.group(1)) if closed else -1,
                "blow_seconds": time.monotonic() - started}

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):  # already closed by the broker
                self._conn.release()
        self._conn = self._channel = None

    def stop(self) -> None:
        self._drop()
        if self._made:
            ctl("delete_vhost", self.vhost)
            self._made = False

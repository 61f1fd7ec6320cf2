"""The machine's RabbitMQ for the tests: a vhost of our own, created and deleted with rabbitmqctl,
so nothing of another user's is touched. RabbitMQ is not on PyPI; where there is no server or no
rabbitmqctl, ``unavailable()`` says why and the tests that need it skip with that reason."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from dataclasses import dataclass

from kombu import Connection

HOST, PORT = "127.0.0.1", 5672
USER = PASSWORD = "guest"  # RabbitMQ's default user, allowed from loopback only


def ctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=60)


def unavailable() -> str | None:
    """Why RabbitMQ cannot be used here, or None when it can."""
    if shutil.which("rabbitmqctl") is None:
        return "RabbitMQ tests need rabbitmqctl (the server's CLI) on PATH"
    try:
        socket.create_connection((HOST, PORT), timeout=2).close()
    except OSError as exc:
        return f"no RabbitMQ server answers on {HOST}:{PORT} ({exc})"
    return None


@dataclass(frozen=True)
class Vhost:
    name: str

    @classmethod
    def create(cls, prefix: str) -> Vhost:
        """A new vhost named ``{prefix}-{pid}``, the guest user allowed everything in it; raises
        RuntimeError with rabbitmqctl's words when it cannot be made (not root?)."""
        vhost = cls(f"{prefix}-{os.getpid()}")
        made = ctl("add_vhost", vhost.name)
        if made.returncode != 0 and "already exists" not in made.stderr:
            raise RuntimeError(f"rabbitmqctl add_vhost failed (run as root?): "
                               f"{made.stderr.strip()[:200]}")
        perms = ctl("set_permissions", "-p", vhost.name, USER, ".*", ".*", ".*")
        if perms.returncode != 0:
            vhost.delete()
            raise RuntimeError(f"rabbitmqctl set_permissions failed: {perms.stderr.strip()[:200]}")
        return vhost

    @property
    def url(self) -> str:
        return f"amqp://{USER}:{PASSWORD}@{HOST}:{PORT}/{self.name}"

    def delete(self) -> None:
        ctl("delete_vhost", self.name)

    def purge(self) -> None:
        """Empty the farm's queues and the dead-letter queue (those declared so far)."""
        from config.queues import QUEUES
        from config.rabbitmq import DEADLETTER

        with Connection(self.url, connect_timeout=10) as conn:
            for name in (*QUEUES, DEADLETTER):
                channel = conn.channel()
                try:
                    channel.queue_purge(name)
                except conn.channel_errors:  # not declared yet (404 closes the channel)
                    pass
                finally:
                    channel.close()

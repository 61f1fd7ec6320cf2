"""Worker process hooks: what each process logs and resets as it starts."""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import worker_process_init, worker_ready, worker_shutting_down

from config import redis as farm_redis

log = logging.getLogger("farm.worker")


@worker_process_init.connect
def _after_fork(**_: Any) -> None:
    # A prefork child must not share its parent's Redis sockets (clients are keyed by pid, but
    # dropping the inherited ones keeps them from being used by mistake).
    farm_redis._clients.clear()


@worker_ready.connect
def _ready(sender: Any = None, **_: Any) -> None:
    queues = sorted(q.name for q in sender.app.amqp.queues.consume_from.values()) if sender else []
    log.info("farm worker %s ready, queues=%s", getattr(sender, "hostname", "?"), ",".join(queues))


@worker_shutting_down.connect
def _shutting_down(sig: str = "", how: str = "", **_: Any) -> None:
    log.info("farm worker shutting down: %s (%s shutdown), running tasks finish first", sig, how)

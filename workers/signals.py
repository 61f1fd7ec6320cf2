"""Worker process hooks: what each process logs and resets as it starts."""

from __future__ import annotations

import logging
import sys
from typing import Any

from celery.signals import (
    task_received,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
    worker_shutting_down,
)

from config.settings import get_settings
from tasks.core.base import task_tally
from workers import faults, metrics, pool_results

log = logging.getLogger("farm.worker")

# Prometheus: this node's metrics files and the per-task hooks, before any task runs.
metrics.connect(get_settings())


# A prefork child's result writes kept whole when its soft time limit fires (pool_results.py).
worker_process_init.connect(pool_results.install, weak=False)


@worker_ready.connect
def _ready(sender: Any = None, **_: Any) -> None:
    queues = sorted(q.name for q in sender.app.amqp.queues.consume_from.values()) if sender else []
    log.info("farm worker %s ready, queues=%s", getattr(sender, "hostname", "?"), ",".join(queues))


if faults.armed("received"):  # a test's warm shutdown as a message arrives (workers/faults.py)
    @task_received.connect
    def _sigterm_on_receipt(**_: Any) -> None:
        faults.sigterm_self_once("received")


@worker_shutting_down.connect
def _shutting_down(sig: str = "", how: str = "", **_: Any) -> None:
    log.info("farm worker shutting down: %s (%s shutdown), running tasks finish first", sig, how)


@worker_shutdown.connect  # the main process: thread pools run their tasks here
@worker_process_shutdown.connect  # a prefork child
def _close_connections(**_: Any) -> None:
    task_tally.flush()  # the counts of its last quarter second
    # Say GOAWAY to APNs rather than vanish: Apple may treat abrupt disconnects as abuse.
    # Only if this process ever pushed: no import (and no event loop) for nothing.
    client = sys.modules.get("tasks.push.apns.client")  # a prefork child's per-process state is
    # emptied at fork (tasks/core/process_local.py); nothing else to reset here
    if client is not None:
        try:
            client.close()
        except Exception:  # shutting down regardless; say so, do not mask the exit
            log.warning("closing the APNs connection failed", exc_info=True)

"""The farm on RabbitMQ (``FARM_BROKER_URL=amqp://...`` or ``amqps://``): quorum queues, the
broker's delivery limit as a backstop to the farm's redelivery cap, and the farm's own
dead-letter exchange and queue.

Every farm queue is a quorum queue (replicated, and the only kind that counts deliveries):
- ``x-delivery-limit`` is a backstop, 2 * FARM_MAX_DELIVERIES + 2; the cap itself is the task
  base's count of starts (tasks/core/base.py), as on Redis: "a message whose worker died
  max_deliveries times is dead-lettered, not rerun". RabbitMQ counts every return of a message,
  also the ones a dying worker only held prefetched and never started, and on quorum queues
  Celery's prefetch is per queue (a 2-process worker on 4 queues holds up to 8): held to the
  farm's cap, the broker dead-lettered 0-8 never-started messages per `make chaos` fanout-parents
  run. The broker's limit still ends a message that kills its consumer before any task starts
  (decoding it, say), which the task base never sees. A limit of L allows L + 1 deliveries
  (measured on 3.10: limit 2 gave three, 0 gave one).
- ``x-dead-letter-exchange`` is :data:`DEADLETTER`, a fanout exchange into the quorum queue of
  the same name, with at-least-once dead-lettering (the message leaves the farm queue only once
  the dead-letter queue has it). The worker's consumer (workers/consumer.py) moves what arrives
  there into the farm's dead-letter store.
- Publisher confirms: a send returns once the broker has the message.

The exchange is a topic exchange, not direct: Celery's native delayed delivery (countdowns and
retries on quorum queues, which cannot hold a message back) only routes through topic exchanges.
Queue names hold no dots, so each routing key matches its one queue as a direct exchange would.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from kombu import Connection, Exchange, Queue

from config.queues import QUEUES
from config.settings import Settings

AMQP_SCHEMES = ("amqp", "amqps")
EXCHANGE = "farm"
DEADLETTER = "farm.deadletter"


def is_amqp(url: str) -> bool:
    return urlsplit(url).scheme in AMQP_SCHEMES


def delivery_limit(s: Settings) -> int:
    """RabbitMQ's x-delivery-limit for FARM_MAX_DELIVERIES: a backstop (module docstring)."""
    return 2 * s.max_deliveries + 2


def queue_arguments(s: Settings) -> dict[str, Any]:
    return {
        "x-queue-type": "quorum",
        "x-delivery-limit": delivery_limit(s),
        "x-dead-letter-exchange": DEADLETTER,
        # at-least-once dead-lettering needs reject-publish overflow (RabbitMQ's rule)
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


def farm_queues(s: Settings) -> list[Queue]:
    exchange = Exchange(EXCHANGE, type="topic")
    args = queue_arguments(s)
    return [Queue(q, exchange, routing_key=q, queue_arguments=args) for q in QUEUES]


def deadletter_queue() -> Queue:
    return Queue(DEADLETTER, Exchange(DEADLETTER, type="fanout"), routing_key=DEADLETTER,
                 queue_arguments={"x-queue-type": "quorum"})


def amqp_config(s: Settings) -> dict[str, Any]:
    """What differs from the Redis configuration (config/celery_app.py) on RabbitMQ."""
    return {
        # visibility timeouts and restore sweeps are Redis's: RabbitMQ requeues at once what a
        # lost connection held
        "broker_transport_options": {"confirm_publish": True},
        "task_queues": farm_queues(s),
        "task_default_exchange_type": "topic",
        "task_default_queue_type": "quorum",
        # per-consumer prefetch (quorum queues have no global QoS) and native delayed delivery
        "worker_detect_quorum_queues": True,
        "broker_native_delayed_delivery_queue_type": "quorum",
    }


def whole_second_delay(options: dict[str, Any]) -> None:
    """Make a send's ``countdown``/``eta`` (in place) a countdown of whole seconds, rounded up.

    Native delayed delivery counts whole seconds, and Celery 5.7 truncates: a retry due in 0.4 s
    became a 0 s countdown, which kombu refuses ("countdown must be a positive number"), so the
    retry was never published. Rounded up, a Retry-After is never cut short."""
    eta = options.pop("eta", None)
    countdown = options.get("countdown")
    if isinstance(eta, datetime):
        now = datetime.now(eta.tzinfo or UTC)
        countdown = (eta - now).total_seconds()
    elif eta is not None:  # an ISO string: left to Celery
        options["eta"] = eta
        return
    if isinstance(countdown, (int, float)):
        if countdown > 0:
            options["countdown"] = max(1, math.ceil(countdown))
        else:
            options.pop("countdown", None)


def declare_deadletter(channel: Any) -> None:
    """Declare the dead-letter exchange and queue (idempotent) on a kombu channel: before any
    farm queue can dead-letter into them, or the broker drops what it dead-letters."""
    deadletter_queue()(channel).declare()


def declare_all(channel: Any, s: Settings) -> None:
    """The dead-letter queue and every farm queue, whichever a worker serves: Celery's native
    delayed delivery binds all of the app's queues at a worker's start, and a countdown sent to a
    queue no worker has declared yet would be dropped."""
    declare_deadletter(channel)
    for queue in farm_queues(s):
        queue(channel).declare()


def queue_depths(url: str, names: Sequence[str], timeout: float = 5.0) -> dict[str, int]:
    """Messages ready per queue, by passive declares (nothing is created; a queue not declared
    yet counts 0). Messages workers hold unacked are not counted, as on Redis."""
    out: dict[str, int] = {}
    with Connection(url, connect_timeout=timeout) as conn:
        conn.ensure_connection(max_retries=1)
        for name in names:
            channel: Any = conn.channel()  # py-amqp's; kombu's stubs know only StdChannel
            try:
                out[name] = int(channel.queue_declare(queue=name, passive=True).message_count)
            except conn.channel_errors:  # NOT_FOUND closes the channel
                out[name] = 0
            finally:
                with contextlib.suppress(Exception):
                    channel.close()
    return out

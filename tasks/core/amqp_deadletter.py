"""Messages RabbitMQ dead-lettered, moved into the farm's dead-letter store.

On RabbitMQ (config/rabbitmq.py) a farm queue dead-letters a message into the quorum queue
``farm.deadletter`` when it came back more often than the delivery limit (its worker died under
it FARM_MAX_DELIVERIES times) or when a worker rejected it without requeueing. The worker's
consumer (workers/consumer.py) takes them from there with ``basic_get`` on a timer, records each
here and only then acks it: a crash in between records it again under the same id, never loses it.

Which record: the task id is the record's id, as for every task dead letter. One already in the
store is kept (the consumer records a hostile message before it rejects it, with the reason it
was refused); the broker's copy is then only acked away.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from kombu import Connection

from config.rabbitmq import DEADLETTER, declare_deadletter
from tasks.core import metrics
from tasks.core.deadletter import MAX_BODY_CHARS, DeadLetter, DeadLetterStore
from tasks.core.text import clip

MAX_NAME = 200
# x-death reasons (RabbitMQ's) -> the farm's dead-letter reasons
REASONS = {"delivery_limit": "redelivered", "rejected": "rejected", "expired": "expired",
           "maxlen": "overflow"}


def _death(headers: dict[str, Any]) -> tuple[str, str, int]:
    """(RabbitMQ's reason, the queue it left, how often) from the x-death headers."""
    deaths = headers.get("x-death")
    first = deaths[0] if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict) \
        else {}
    reason = str(headers.get("x-first-death-reason") or first.get("reason") or "")
    queue = str(headers.get("x-first-death-queue") or first.get("queue") or "")
    count = first.get("count")
    return reason, queue, count if isinstance(count, int) else 1


def to_dead_letter(body: bytes, headers: dict[str, Any]) -> DeadLetter:
    """The store's record of one dead-lettered message (Celery protocol 2, JSON)."""
    broker_reason, queue, _ = _death(headers)
    reason = REASONS.get(broker_reason, broker_reason or "rejected")
    task, task_id = (v if isinstance(v := headers.get(k), str) else "" for k in ("task", "id"))
    retries = headers.get("retries")
    attempts = (retries if isinstance(retries, int) and retries >= 0 else 0) + 1
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    kept = ""
    try:
        payload = json.loads(body)
        if not (isinstance(payload, list) and len(payload) == 3
                and isinstance(payload[0], list) and isinstance(payload[1], dict)):
            raise ValueError("not [args, kwargs, embed]")
        args, kwargs = payload[0], payload[1]
    except ValueError:  # kept as received: it cannot be replayed
        kept = body[:MAX_BODY_CHARS].decode("utf-8", "replace") or "(empty)"
    if broker_reason == "delivery_limit":
        error = ("WorkerLost: its worker died under it too often (RabbitMQ's delivery limit, "
                 "FARM_MAX_DELIVERIES); dead-lettered by the broker")
    else:
        error = f"dead-lettered by RabbitMQ ({clip(broker_reason or 'unknown', 40)})"
    entry_id = clip(task_id, MAX_NAME) or f"amqp-{hashlib.sha256(body).hexdigest()[:24]}"
    return DeadLetter(id=entry_id, task=clip(task, MAX_NAME), queue=clip(queue, 64),
                      args=args, kwargs=kwargs, reason=reason, error=error, traceback="",
                      attempts=attempts, body=kept, size=len(body) if kept else 0)


def adopt_dead_lettered(channel: Any, store: DeadLetterStore,
                        limit: int = 500) -> tuple[list[DeadLetter], int]:
    """Move up to ``limit`` messages from ``farm.deadletter`` (a kombu/py-amqp channel) into the
    store: the records newly written (ones already there are kept, their copy acked), and how
    many messages were taken off the queue."""
    written: list[DeadLetter] = []
    taken = 0
    for taken in range(1, limit + 1):
        message = channel.basic_get(queue=DEADLETTER, no_ack=False)
        if message is None:
            taken -= 1
            break
        raw = message.body
        body = raw if isinstance(raw, bytes) else str(raw).encode("utf-8", "surrogateescape")
        headers = message.headers if isinstance(message.headers, dict) else {}
        entry = to_dead_letter(body, headers)
        if store.get(entry.id) is None:
            store.record(entry)
            metrics.incr(store.r, store.settings, "deadletter." + entry.reason)
            written.append(entry)
        channel.basic_ack(message.delivery_tag)
    return written, taken


def adopt_from_broker(url: str, store: DeadLetterStore, timeout: float = 5.0) -> int:
    """What `farm stats` and `farm deadletter` do first on RabbitMQ, as a worker's sweep does:
    move the broker's dead letters into the store; how many records were written."""
    with Connection(url, connect_timeout=timeout) as conn:
        channel = conn.channel()
        declare_deadletter(channel)
        written, _ = adopt_dead_lettered(channel, store)
        return len(written)

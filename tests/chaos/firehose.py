"""What RabbitMQ accepted into the mode's vhost, from its firehose (the "sent" source of the audit
on RabbitMQ, as the append-only file is on Redis: aof.py).

With tracing on (``rabbitmqctl trace_on -p VHOST``) the broker copies every message published in
the vhost to the topic exchange ``amq.rabbitmq.trace``, routing key ``publish.<exchange>``, with
the exchange, routing keys, the queues it was routed to and the message's own properties (task id
and name in its headers) as headers, and the body unchanged. A durable queue of the harness's own,
bound before any worker starts, keeps that history to be read back at the end. It is not a farm
queue: the backlog (rabbit.py) never counts it.

Which publishes carry tasks: to the farm's exchange (``farm``: the web tier, tasks' follow-ons,
the ledger sweep, dead-letter replays) and to ``celery_delayed_27`` (Celery's native delayed
delivery: a retry or countdown, routing key ``<delay bits>.<queue>``). The broker moving a message
through the delay levels, into the dead-letter queue or back onto its queue after a lost
connection is no publish. Events and remote-control messages (``celeryev``, pidbox) are not
bound: they are not tasks.

Deliveries are not needed to count what was sent; they are traced (``deliver.<queue>``) only for
the figure of messages handed out again (``redelivered`` set: their worker's connection died or
they were requeued).
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from kombu import Connection

from config.queues import QUEUES
from tests.chaos.audit import Sent

EXCHANGE = "amq.rabbitmq.trace"
QUEUE = "chaos.firehose"
DELAYED_EXCHANGE = "celery_delayed_27"  # celery/app/base.py: every countdown enters here
KEYS = ("publish.farm", f"publish.{DELAYED_EXCHANGE}", *(f"deliver.{q}" for q in QUEUES))


def bind(url: str) -> None:
    """The harness's trace queue, bound to every publish that can carry a task (tracing must be
    on for the vhost: ``rabbitmqctl trace_on``). Lazy: the history stays on disk, not in RAM."""
    with Connection(url, connect_timeout=10) as conn:
        channel: Any = conn.channel()
        channel.queue_declare(QUEUE, durable=True, auto_delete=False,
                              arguments={"x-queue-mode": "lazy"})
        for key in KEYS:
            channel.queue_bind(QUEUE, EXCHANGE, key)


def read(url: str, idle: float = 2.0) -> dict[str, Sent]:
    """Every task message the broker accepted, by id, from the trace queue (taken off it)."""
    sent: dict[str, Sent] = {}
    handed_again: Counter[str] = Counter()

    def on_message(message: Any) -> None:
        take(message, sent, handed_again)

    with Connection(url, connect_timeout=10) as conn:
        channel: Any = conn.channel()
        channel.basic_qos(0, 2000, False)
        channel.basic_consume(QUEUE, no_ack=True, callback=on_message)
        while True:
            try:
                conn.drain_events(timeout=idle)
            except TimeoutError:  # nothing came for a while: done once the queue is empty
                if channel.queue_declare(QUEUE, passive=True).message_count == 0:
                    break
    for task_id, n in handed_again.items():
        if task_id in sent:
            sent[task_id].redelivered += n
    return sent


def take(message: Any, sent: dict[str, Sent], handed_again: Counter[str]) -> None:
    trace = message.headers or {}
    props = trace.get("properties") or {}
    headers = props.get("headers") or {}
    task_id, task = headers.get("id"), headers.get("task")
    if not isinstance(task_id, str) or not isinstance(task, str):
        return  # not a task message
    key = message.delivery_info.get("routing_key", "")
    if key.startswith("deliver."):
        handed_again[task_id] += bool(trace.get("redelivered"))
        return
    if task_id in sent:  # a retry keeps its task id: the same task, sent again
        return
    routing = trace.get("routing_keys") or [""]
    queue = str(routing[0]).rsplit(".", 1)[-1]  # a delayed message's key ends in its queue
    if not trace.get("routed_queues"):
        queue += " (routed to no queue: dropped by the broker)"
    body = message.body if isinstance(message.body, bytes) else str(message.body).encode()
    try:
        kwargs = json.loads(body)[1]
    except (ValueError, IndexError, KeyError, TypeError):
        kwargs = {"body": body[:200].decode("utf-8", "replace")}
    sent[task_id] = Sent(task, queue, kwargs if isinstance(kwargs, dict) else {})

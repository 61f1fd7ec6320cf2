"""The amqp audit's source (tests/chaos/firehose.py) on the machine's RabbitMQ, in a vhost of its
own: every task message the broker accepted is read back, one routed to no queue included (the
broker confirms it and drops it: a loss the audit must see), and a message handed out again is
counted as redelivered. Skipped, saying why, without a RabbitMQ server or rabbitmqctl."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from kombu import Connection, Exchange, Queue

from tests.chaos import firehose
from tests.chaos.rabbit import AmqpBroker, unavailable

pytestmark = pytest.mark.skipif(unavailable() is not None,
                                reason=f"RabbitMQ: {unavailable()}")


@pytest.fixture
def broker() -> Iterator[AmqpBroker]:
    b = AmqpBroker("firehose-test")
    try:
        b.start()
        yield b
    finally:
        b.stop()


def task(task_id: str, n: int) -> dict[str, Any]:
    return {"headers": {"id": task_id, "task": "feeds.fanout_chunk"},
            "body": json.dumps([[], {"n": n}, {}]).encode(), "content_type": "application/json",
            "content_encoding": "utf-8"}


def test_every_accepted_task_message_is_read_back_and_redeliveries_counted(
        broker: AmqpBroker) -> None:
    with Connection(broker.url) as conn:
        channel: Any = conn.channel()
        feeds = Queue("feeds", Exchange("farm", type="topic"), routing_key="feeds")(channel)
        feeds.declare()
        producer = conn.Producer(channel)
        for n, key in enumerate(("feeds", "feeds", "nowhere")):
            m = task(f"t{n}", n)
            producer.publish(m.pop("body"), exchange="farm", routing_key=key, **m)
        producer.publish(b"{}", exchange="farm", routing_key="feeds")  # no task headers: skipped
        taken = channel.basic_get("feeds", no_ack=False)
        channel.basic_reject(taken.delivery_tag, requeue=True)  # back on the queue
        again = channel.basic_get("feeds", no_ack=False)
        channel.basic_ack(again.delivery_tag)
        assert again.delivery_info["redelivered"]
    sent = firehose.read(broker.url, idle=0.5)
    assert sorted(sent) == ["t0", "t1", "t2"]
    assert (sent["t0"].task, sent["t0"].queue, sent["t0"].kwargs) == (
        "feeds.fanout_chunk", "feeds", {"n": 0})
    assert sent["t2"].queue.startswith("nowhere (routed to no queue")
    assert (sent["t0"].redelivered, sent["t1"].redelivered) == (1, 0)
    assert broker.backlog() == {"feeds": 2}

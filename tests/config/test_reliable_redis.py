"""Reliable fetch (config/reliable_redis.py) against a real server and real consumer processes:
a consumer killed at each point between taking a message off its queue and recording it loses
nothing, and a consumer that closes hands back what it was waiting on."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from kombu import Connection, Consumer, Exchange, Producer, Queue

from config.reliable_redis import INFLIGHT_INDEX, UNPARSABLE
from tests.support.reliable_consumer import OPTIONS
from tests.support.workers import wait_for
from workers.embedded_redis import EmbeddedRedis

pytestmark = pytest.mark.integration

DB = 3  # the session server's database for these tests alone
TRANSPORT = "config.reliable_redis:Transport"
ROOT = Path(__file__).resolve().parents[2]
EXCHANGE = Exchange("farm", type="direct")


@pytest.fixture
def url(redis_server: EmbeddedRedis) -> Iterator[str]:
    address = redis_server.url(DB)
    client = redis.Redis.from_url(address)
    client.flushdb()
    yield address
    client.flushdb()
    client.close()


@pytest.fixture
def server(url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(url, decode_responses=True)
    yield client
    client.close()


def publish(url: str, name: str, *bodies: object) -> None:
    q = Queue(name, EXCHANGE, routing_key=name)
    with Connection(url, transport=TRANSPORT, transport_options=OPTIONS) as conn:
        producer = Producer(conn.channel(), exchange=EXCHANGE)
        for body in bodies:
            producer.publish(body, routing_key=name, declare=[q])


class ConsumerProcess:
    """tests/support/reliable_consumer.py in its own process; its lines read by a thread."""

    def __init__(self, url: str, queues: str, count: int, fault: str = "") -> None:
        env = {**os.environ, "PHOTOFARM_FAULT_POINT": fault}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.reliable_consumer", url, queues, str(count)],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.bodies: list[object] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.expect("ready")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())

    def expect(self, line: str, timeout: float = 30.0) -> None:
        assert self.lines.get(timeout=timeout) == line

    def received(self, n: int, timeout: float = 30.0) -> list[object]:
        while len(self.bodies) < n:
            self.bodies.append(json.loads(self.lines.get(timeout=timeout)))
        return self.bodies

    def died_killed(self, timeout: float = 30.0) -> bool:
        return self.proc.wait(timeout) == -signal.SIGKILL

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def consumers() -> Iterator[list[ConsumerProcess]]:
    started: list[ConsumerProcess] = []
    yield started
    for c in started:
        c.stop()


def nothing_left(server: redis.Redis, *queues: str) -> bool:
    return (not any(server.llen(q) for q in queues) and not server.hlen("unacked")
            and not server.zcard("unacked_index") and not server.hlen(INFLIGHT_INDEX)
            and not server.keys("_kombu.inflight.list.*"))


def test_messages_are_delivered_once_in_queue_order_and_nothing_stays_behind(
        url: str, server: redis.Redis, consumers: list[ConsumerProcess]) -> None:
    publish(url, "a", *[{"n": i} for i in range(5)])
    c = ConsumerProcess(url, "a", 6)
    consumers.append(c)
    assert c.received(5) == [{"n": i} for i in range(5)]  # fetched, in order
    publish(url, "a", {"n": 5})  # the consumer is waiting now: the blocking path
    assert c.received(6)[-1] == {"n": 5}
    assert c.proc.wait(30) == 0
    wait_for(lambda: nothing_left(server, "a"), what="no message, record or in-flight list left")


@pytest.mark.parametrize(("point", "waiting"), [
    ("fetched", False),  # popped and recorded by the fetch script: the visibility timeout
    ("moved", True),  # moved into the consumer's in-flight list by BLMOVE: the heartbeat sweep
    ("claimed", True),  # recorded from the in-flight list: the visibility timeout
])
def test_a_consumer_killed_between_taking_and_running_a_message_loses_nothing(
        url: str, server: redis.Redis, consumers: list[ConsumerProcess], point: str,
        waiting: bool) -> None:
    if not waiting:
        publish(url, "a", {"id": point})
    doomed = ConsumerProcess(url, "a", 1, fault=point)
    consumers.append(doomed)
    if waiting:  # let it reach the blocking wait, then hand it the message
        wait_for(lambda: server.keys("_kombu.inflight.alive.*"), what="the consumer to wait")
        publish(url, "a", {"id": point})
    assert doomed.died_killed(), f"the consumer did not die at {point}"
    assert server.llen("a") == 0  # taken off the queue: only the farm's records hold it now
    held = server.hlen("unacked") + sum(server.llen(k) for k in
                                        server.keys("_kombu.inflight.list.*"))
    assert held == 1, f"at {point} the message must be recorded somewhere, found {held}"

    rescuer = ConsumerProcess(url, "a", 1)
    consumers.append(rescuer)
    assert rescuer.received(1) == [{"id": point}]
    assert rescuer.proc.wait(30) == 0
    wait_for(lambda: nothing_left(server, "a"), what="the rescued message's records gone")


def test_a_closing_consumer_hands_back_the_list_it_was_waiting_on(
        url: str, server: redis.Redis) -> None:
    q = Queue("a", EXCHANGE, routing_key="a")
    with Connection(url, transport=TRANSPORT, transport_options=OPTIONS) as conn:
        channel = conn.channel()
        with Consumer(channel, queues=[q], callbacks=[lambda body, message: None]):
            with pytest.raises(TimeoutError):
                conn.drain_events(timeout=0.2)  # nothing queued: it now blocks in BLMOVE
            assert server.hlen(INFLIGHT_INDEX) == 1
            assert server.keys("_kombu.inflight.alive.*")
    assert not server.hlen(INFLIGHT_INDEX) and not server.keys("_kombu.inflight.*")
    publish(url, "a", {"after": "close"})
    assert server.llen("a") == 1  # on its queue for the next consumer, not in a dead list


def test_a_message_that_is_not_kombus_is_kept_aside_and_the_rest_flow(
        url: str, server: redis.Redis, consumers: list[ConsumerProcess]) -> None:
    publish(url, "a", {"n": 1})
    server.rpush("a", "not json at all")  # next in line
    c = ConsumerProcess(url, "a", 1)
    consumers.append(c)
    assert c.received(1) == [{"n": 1}]
    assert server.lrange(UNPARSABLE, 0, -1) == ["not json at all"]


def test_a_channel_closed_twice_raises_nothing(url: str, server: redis.Redis) -> None:
    """kombu closes a channel on a connection error, then again with its connection; by then
    the channel has no pool and no connection, and a raise would stop the worker."""
    q = Queue("a", EXCHANGE, routing_key="a")
    with Connection(url, transport=TRANSPORT, transport_options=OPTIONS) as conn:
        channel = conn.channel()
        with Consumer(channel, queues=[q], callbacks=[lambda body, message: None]):
            with pytest.raises(TimeoutError):
                conn.drain_events(timeout=0.2)  # blocked in BLMOVE: it has a list to hand back
            channel.close()
            assert channel.connection is None
            channel.close()
    assert not server.hlen(INFLIGHT_INDEX)


def test_an_ack_the_broker_does_not_take_still_frees_the_prefetch_slot() -> None:
    """The broker gone between a task's run and its ack: the ack raises (Celery logs it), the
    message stays unacked on the broker for the visibility sweep, and the consumer's prefetch
    slot is free again. Held, a worker whose every slot was held so never fetched again once
    its link came back (tests/hosts/test_host_loss.py)."""
    with EmbeddedRedis() as broker:
        url = broker.url(0)
        publish(url, "a", {"n": 1})
        with Connection(url, transport=TRANSPORT, transport_options=OPTIONS) as conn:
            channel = conn.channel()
            channel.basic_qos(0, 1, False)
            message = channel.basic_get("a")
            assert message is not None and not channel.qos.can_consume()
            broker.kill()
            with pytest.raises(conn.connection_errors):
                message.ack()
            assert channel.qos.can_consume()

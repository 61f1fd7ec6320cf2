"""The cost of reliable fetch: publish and drain rates through the farm's transport
(config/reliable_redis.py) beside kombu's stock Redis transport, same server, same run.

    python -m bench.fetch [--messages N] [--rounds R]      (or: farm bench fetch)

Each round publishes N Celery-sized messages (the farm's own message for a fan-out chunk) to one
queue and drains them with one consumer that acks each, first through one transport then the
other (the order alternates by round, so a drift in machine speed hits both); medians are
compared. It also times the wake-up of an idle consumer: from a publish to its delivery while the
consumer waits (BRPOP for stock, BLMOVE then the claim for reliable fetch). Starts its own
embedded Redis. The last line holds the ratios (reliable / stock).
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from typing import Any

from kombu import Connection, Consumer, Exchange, Message, Producer, Queue

TRANSPORTS = {"stock": "kombu.transport.redis:Transport",
              "reliable": "config.reliable_redis:Transport"}
OPTIONS = {"visibility_timeout": 3600}
EXCHANGE = Exchange("farm", type="direct")
QUEUE = Queue("bench", EXCHANGE, routing_key="bench")
# What a fan-out chunk's message carries (tasks/feeds/ledger.py), as Celery would send it.
BODY = [[], {"photo_id": 1893120473423561728, "owner_id": 1001, "lo": 0, "hi": 5000,
             "active": True}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
HEADERS = {"lang": "py", "task": "feeds.fanout_chunk", "id": "0" * 36, "retries": 0,
           "argsrepr": "()", "kwargsrepr": "{...}", "origin": "gen1@bench", "ignore_result": True}


def publish(url: str, transport: str, n: int) -> float:
    """Seconds to publish n messages, one publish each (as tasks and the web tier do)."""
    with Connection(url, transport=transport, transport_options=OPTIONS) as conn:
        channel = conn.channel()
        producer = Producer(channel, exchange=EXCHANGE, serializer="json")
        QUEUE(channel).declare()
        start = time.perf_counter()
        for _ in range(n):
            producer.publish(BODY, routing_key="bench", headers=HEADERS)
        return time.perf_counter() - start


def drain(url: str, transport: str, n: int) -> float:
    """Seconds for one consumer (prefetch 1, acking each) to take n messages."""
    seen = 0

    def on_message(_body: Any, message: Message) -> None:
        nonlocal seen
        seen += 1
        message.ack()

    with Connection(url, transport=transport, transport_options=OPTIONS) as conn:
        channel: Any = conn.channel()  # a virtual channel: basic_qos is not in kombu's stubs
        channel.basic_qos(0, 1, False)
        with Consumer(channel, queues=[QUEUE], callbacks=[on_message], accept=["json"]):
            start = time.perf_counter()
            while seen < n:
                conn.drain_events(timeout=10)
            return time.perf_counter() - start


def wake(url: str, transport: str, samples: int) -> list[float]:
    """Milliseconds from a publish to its delivery, to a consumer idle in its blocking wait."""
    delays: list[float] = []
    got = threading.Event()

    def on_message(_body: Any, message: Message) -> None:
        message.ack()
        got.set()

    with Connection(url, transport=transport, transport_options=OPTIONS) as conn, \
            Connection(url, transport=transport, transport_options=OPTIONS) as pub:
        producer = Producer(pub.channel(), exchange=EXCHANGE, serializer="json")
        channel: Any = conn.channel()  # a virtual channel: basic_qos is not in kombu's stubs
        channel.basic_qos(0, 1, False)
        with Consumer(channel, queues=[QUEUE], callbacks=[on_message], accept=["json"]):
            sent: list[float] = []

            def send() -> None:
                time.sleep(0.02)  # let the consumer settle into its wait
                sent.append(time.perf_counter())
                producer.publish(BODY, routing_key="bench", headers=HEADERS)

            for _ in range(samples):
                got.clear()
                sent.clear()
                sender = threading.Thread(target=send)
                sender.start()
                while not got.is_set():
                    conn.drain_events(timeout=5)
                delays.append((time.perf_counter() - sent[0]) * 1000)
                sender.join()
    return delays


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000, help="messages per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--wakes", type=int, default=50, help="idle wake-ups timed")
    opts = parser.parse_args(argv)

    import redis

    from workers.embedded_redis import EmbeddedRedis

    with EmbeddedRedis() as server:
        url = server.url(0)
        flush = redis.Redis.from_url(url).flushdb
        for transport in TRANSPORTS.values():  # warm up
            publish(url, transport, 200)
            drain(url, transport, 200)
        pub: dict[str, list[float]] = {name: [] for name in TRANSPORTS}
        drn: dict[str, list[float]] = {name: [] for name in TRANSPORTS}
        for r in range(opts.rounds):
            order = list(TRANSPORTS.items())
            for name, transport in order if r % 2 == 0 else order[::-1]:
                flush()
                pub[name].append(opts.messages / publish(url, transport, opts.messages))
                drn[name].append(opts.messages / drain(url, transport, opts.messages))
        wakes = {name: wake(url, transport, opts.wakes) for name, transport in TRANSPORTS.items()}

    def line(what: str, rates: dict[str, list[float]]) -> float:
        medians = {name: statistics.median(values) for name, values in rates.items()}
        for name, values in rates.items():
            print(f"{what:<8} {name:<9} median {medians[name]:>8.0f} msg/s  "
                  f"(min {min(values):.0f}, max {max(values):.0f}, {opts.rounds} rounds of "
                  f"{opts.messages})")
        return medians["reliable"] / medians["stock"]

    publish_ratio = line("publish", pub)
    drain_ratio = line("drain", drn)
    for name, values in wakes.items():
        print(f"wake     {name:<9} median {statistics.median(values):>6.2f} ms  "
              f"(p90 {statistics.quantiles(values, n=10)[-1]:.2f} ms, {len(values)} idle wake-ups)")
    print(f"reliable / stock: publish {publish_ratio:.3f}, drain {drain_ratio:.3f}, idle wake-up "
          f"{statistics.median(wakes['reliable']) / statistics.median(wakes['stock']):.2f}x")


if __name__ == "__main__":
    main()

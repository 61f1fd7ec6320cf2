"""`farm stats`: queue depths, per-task outcomes and time, dead letters, other counters.

Messages that never ran as a task (undecodable, unknown task, bad protocol, too large) are dead
letters like any failure, and counted apart under ``messages.*``; names are printed escaped
(tasks/core/text.py)."""

from __future__ import annotations

import argparse
import json
from typing import TypedDict

from config.queues import QUEUES
from config.rabbitmq import is_amqp
from config.rabbitmq import queue_depths as amqp_queue_depths
from config.sentinel import redis_from_url
from config.settings import Settings, get_settings
from tasks.core import metrics
from tasks.core.amqp_deadletter import adopt_from_broker
from tasks.core.deadletter import DeadLetterStore, adopt_unparsable
from tasks.core.redis import data_redis
from tasks.core.text import printable


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("stats", help="queue depths, task outcomes, dead letters")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=run)


def queue_depths(s: Settings, adopt: bool = False) -> dict[str, int]:
    """Messages waiting per queue (kombu keeps each Redis queue as a list named after it).
    With ``adopt``, what reliable fetch set aside as not kombu's first becomes a dead letter.
    On RabbitMQ: passive declares, and what the broker dead-lettered is adopted instead."""
    if is_amqp(s.broker_url):
        if adopt:
            adopt_from_broker(s.broker_url, DeadLetterStore(data_redis(), s))
        return amqp_queue_depths(s.broker_url, QUEUES)
    broker = redis_from_url(s.broker_url, s)
    try:
        if adopt:
            adopt_unparsable(broker, DeadLetterStore(data_redis(), s))
        pipe = broker.pipeline(transaction=False)
        for q in QUEUES:
            pipe.llen(q)
        return dict(zip(QUEUES, pipe.execute(), strict=True))
    finally:
        broker.close()


class FarmStats(TypedDict):
    queues: dict[str, int]  # queue -> messages waiting
    tasks: dict[str, dict[str, float]]  # task -> {ok, retry, deadletter, ms}
    counters: dict[str, int]
    deadletters: int


def collect(s: Settings) -> FarmStats:
    r = data_redis()
    return {
        "queues": queue_depths(s, adopt=True),
        "tasks": metrics.read(r, s),
        "counters": metrics.counters(r, s),
        "deadletters": DeadLetterStore(r, s).count(),
    }


def run(args: argparse.Namespace) -> int:
    stats = collect(get_settings())
    if args.json:
        print(json.dumps(stats, indent=2, sort_keys=True))
        return 0
    print("queue             waiting")
    for q, n in stats["queues"].items():
        print(f"{q:<17} {n:>7}")
    print(f"\n{'task':<24} {'ok':>6} {'retry':>6} {'dead':>6} {'mean ms':>8}")
    for name, c in sorted(stats["tasks"].items()):
        runs = c["ok"] + c["retry"] + c["deadletter"]
        mean = c["ms"] / runs if runs else 0.0
        print(f"{printable(name):<24} {c['ok']:>6.0f} {c['retry']:>6.0f} "
              f"{c['deadletter']:>6.0f} {mean:>8.1f}")
    for name, value in sorted(stats["counters"].items()):
        print(f"{printable(name)}: {value}")
    print(f"\ndead letters: {stats['deadletters']}")
    return 0

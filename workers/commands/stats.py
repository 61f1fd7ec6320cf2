"""`farm stats`: queue depths, per-task outcomes and time, dead letters, other counters."""

from __future__ import annotations

import argparse
import json
from typing import TypedDict

import redis

from config.queues import QUEUES
from config.settings import Settings, get_settings
from tasks.core import metrics
from tasks.core.deadletter import DeadLetterStore
from tasks.core.redis import data_redis


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("stats", help="queue depths, task outcomes, dead letters")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=run)


def queue_depths(s: Settings) -> dict[str, int]:
    """Messages waiting per queue (kombu keeps each Redis queue as a list named after it)."""
    broker = redis.Redis.from_url(s.broker_url)
    try:
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
        "queues": queue_depths(s),
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
        print(f"{name:<24} {c['ok']:>6.0f} {c['retry']:>6.0f} {c['deadletter']:>6.0f} "
              f"{mean:>8.1f}")
    for name, value in sorted(stats["counters"].items()):
        print(f"{name}: {value}")
    print(f"\ndead letters: {stats['deadletters']}")
    return 0

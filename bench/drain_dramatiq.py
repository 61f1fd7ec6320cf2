"""`farm bench drain`'s Dramatiq baseline: Dramatiq's Redis broker with its default middleware
and one no-op actor, run as ``dramatiq bench.drain_dramatiq`` (bench/drain.py starts it).

    python -m bench.drain_dramatiq N      publish N no-op messages (DRAIN_BROKER_URL)
"""

from __future__ import annotations

import os
import sys

import dramatiq
from dramatiq.brokers.redis import RedisBroker

url = os.environ.get("DRAIN_BROKER_URL", "redis://")
dramatiq.set_broker(RedisBroker(url=url))  # type: ignore[no-untyped-call]


@dramatiq.actor(queue_name="default")
def noop() -> None:
    """Nothing: the worker's own cost per task is what is measured."""


if __name__ == "__main__":
    for _ in range(int(sys.argv[1])):
        noop.send()

"""`farm bench drain`'s stock Celery baseline: a plain Celery app with Celery's default settings
and one no-op task, run as ``celery -A bench.drain_celery worker`` (bench/drain.py starts it).

    python -m bench.drain_celery N      publish N no-op messages (DRAIN_BROKER_URL)
"""

from __future__ import annotations

import os
import sys

from celery import Celery

# Defaults throughout: JSON, acks on receipt, prefetch multiplier 4, queue "celery".
app = Celery("stock", broker=os.environ.get("DRAIN_BROKER_URL", "redis://"))


@app.task(name="noop")
def noop() -> None:
    """Nothing: the worker's own cost per task is what is measured."""


if __name__ == "__main__":
    with app.producer_or_acquire() as producer:
        for _ in range(int(sys.argv[1])):
            noop.apply_async(producer=producer)

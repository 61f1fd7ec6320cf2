"""How a task's logic sends follow-on messages: by stable task name, to the task's routed queue
unless told otherwise, through the farm's one Celery app.

The app is looked up on use, not at import: a module that only declares jobs or logic (and the
`farm` command that lists them) must not build the app before the process has its settings.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from config.queues import queue_for


def send(task: str, kwargs: Mapping[str, Any], *, queue: str | None = None,
         producer: Any = None) -> str:
    """Publish one message; returns its task id."""
    from config.celery_app import app

    result = app.send_task(task, kwargs=dict(kwargs), queue=str(queue or queue_for(task)),
                           producer=producer)
    return str(result.id)


@contextmanager
def batch() -> Iterator[Any]:
    """A producer whose publishes go out pipelined, 1000 per round trip (kombu's publish batch):
    a publish each would cost a millisecond apiece, seconds for a big account's fan-out."""
    from config.celery_app import app

    with app.producer_or_acquire() as producer, producer.batch():
        yield producer

"""How a task's logic sends follow-on messages: by stable task name, to the task's routed queue
unless told otherwise, through the farm's one Celery app.

A publish the broker refuses (down, failing over, loading its AOF, denying writes) is tried
again for up to PUBLISH_PATIENCE seconds, then raised as BrokerUnavailable, a transient error:
the task retries, and if the broker refuses that too the task base hands the message back to
the broker. A follow-on is never silently dropped.

The app is looked up on use, not at import: a module that only declares jobs or logic (and the
`farm` command that lists them) must not build the app before the process has its settings.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

import kombu.exceptions
import redis
from kombu.exceptions import OperationalError

from config.queues import queue_for
from tasks.core.errors import TransientError

# Seconds a publish is retried while the broker refuses it: a restarted broker loads its AOF for
# a few seconds, a failover takes about as long. Tasks' soft time limits are far longer.
PUBLISH_PATIENCE = 15.0
T = TypeVar("T")
# BatchPublishError: kombu 5.7's pipelined publish failed part way (delivery uncertain); sent
# again whole, as every farm message is safe to receive twice
_BATCH_REFUSED: type[Exception] = kombu.exceptions.BatchPublishError  # type: ignore[attr-defined]
BROKER_ERRORS: tuple[type[BaseException], ...] = (OperationalError, _BATCH_REFUSED,
                                                  redis.RedisError, OSError)


class BrokerUnavailable(TransientError):
    """The broker refused a publish for PUBLISH_PATIENCE seconds."""


def send(task: str, kwargs: Mapping[str, Any], *, queue: str | None = None,
         producer: Any = None) -> str:
    """Publish one message; returns its task id. Inside :func:`batch` (``producer`` given) the
    message only joins the batch: the batch's flush is what can fail, and is retried whole."""
    from config.celery_app import app

    def once() -> str:
        result = app.send_task(task, kwargs=dict(kwargs), queue=str(queue or queue_for(task)),
                               producer=producer)
        return str(result.id)

    if producer is not None:
        return once()
    return patiently(f"publish {task}", once)


@contextmanager
def batch() -> Iterator[Any]:
    """A producer whose publishes go out pipelined, 1000 per round trip (kombu's publish batch):
    a publish each would cost a millisecond apiece, seconds for a big account's fan-out. A batch
    the broker refuses raises BrokerUnavailable; whoever retries it sends it whole again (every
    farm message is safe to receive twice)."""
    from config.celery_app import app

    try:
        with app.producer_or_acquire() as producer, producer.batch():
            yield producer
    except BROKER_ERRORS as exc:
        raise BrokerUnavailable(f"publish batch refused by the broker: {exc}") from exc


def patiently(what: str, attempt: Callable[[], T]) -> T:
    """``attempt()``, tried again with backoff while the broker refuses it, up to
    PUBLISH_PATIENCE seconds; then BrokerUnavailable."""
    deadline = time.monotonic() + PUBLISH_PATIENCE
    pause = 0.1
    while True:
        try:
            return attempt()
        except BROKER_ERRORS as exc:
            if time.monotonic() + pause > deadline:
                raise BrokerUnavailable(f"{what}: refused by the broker for "
                                        f"{PUBLISH_PATIENCE:g}s: {exc}") from exc
            time.sleep(pause)
            pause = min(pause * 2, 2.0)

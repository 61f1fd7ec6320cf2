"""Worker heartbeats that never hold up the worker's event loop.

Celery sends a ``worker-heartbeat`` event every 2 s from a timer on the consumer's event loop,
publishing with retries and no limit on them (``celery.worker.heartbeat.Heart._send(retry=True)``
and kombu's ``ensure`` with ``max_retries=None``); ``worker-offline`` at shutdown the same way. A
worker whose broker is out of reach then sits in that retry loop for as long as the outage
lasts: no acks, no time limits, and never Celery's own reconnect, which gives up after
``broker_connection_max_retries`` and lets supervisord restart the worker. Found by
tests/hosts/test_host_loss.py.

Here each heartbeat is sent once. One that fails is kept by Celery's event dispatcher, as any
event it cannot send (``buffer_while_offline``), and goes out with the first send that gets
through; the loop goes on, and the next heartbeat follows two seconds later. The same holds
for ``worker-offline`` at shutdown.
"""

from __future__ import annotations

from typing import Any

from celery.worker import heartbeat
from celery.worker.consumer import heart


class OnceHeart(heartbeat.Heart):
    def _send(self, event: str, retry: bool = False) -> Any:
        return heartbeat.Heart._send(self, event, retry=False)  # type: ignore[attr-defined]


class Heart(heart.Heart):
    """The consumer's heartbeat step (workers/consumer.py's blueprint), sending with OnceHeart."""

    heartbeat_interval: float | None  # Celery's step sets it; celery-types leaves it out

    def start(self, c: Any) -> None:
        c.heart = OnceHeart(c.timer, c.event_dispatcher, self.heartbeat_interval)
        c.heart.start()

"""Task events leave a worker in batches: one PUBLISH per FARM_EVENT_FLUSH_SECONDS (0.1 s), not
one per turn of the event loop.

Celery already buffers a worker's task events (received, started, succeeded...) and sends them
as one ``task-multi`` message, but it flushes that buffer on the loop's next turn, and with
short tasks nearly every turn has an event: `farm bench drain` counted 2.5 PUBLISH round trips
per no-op task, a quarter of a worker's time. Here the flush waits up to that interval, so
a busy worker sends a batch of ``buffer_limit`` events (Celery's 24, about 8 tasks) per PUBLISH
and an idle one sends each event within 0.1 s. Flower and `farm top` see the same events,
at most that much later. What is buffered is flushed before the consumer shuts down.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

from config.settings import get_settings

log = logging.getLogger("farm.events")


class BatchedEvents:
    """Mixed into the worker's Celery Consumer (workers/consumer.py)."""

    hub: Any
    event_dispatcher: Any
    _flush_events: Callable[[], None]  # Celery's Consumer's (annotation only: not shadowed)
    _flush_timer: Any = None

    def on_send_event_buffered(self) -> Any:  # None; celery-types' stub says a callable
        """Celery calls this for each event it buffers: schedule one flush, not one per event."""
        if self.hub is None:
            self._flush_events()
        elif self._flush_timer is None:
            self._flush_timer = self.hub.call_later(get_settings().event_flush_seconds,
                                                      self._flush_due)

    def _flush_due(self) -> None:
        self._flush_timer = None
        self._flush_events()

    def flush_buffered_events(self) -> None:
        """Send what is buffered now (the consumer stopping); never raises."""
        if self._flush_timer is not None:
            with contextlib.suppress(Exception):
                self._flush_timer.cancel()
            self._flush_timer = None
        try:
            self._flush_events()
        except Exception as exc:  # a broker gone at shutdown: those events are lost, as Celery's
            log.warning("task events not sent at shutdown: %s", exc)

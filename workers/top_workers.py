"""The workers `farm top` lists, from the heartbeats they send anyway (Celery worker events,
every two seconds, on the broker's pub/sub): nothing is polled, nothing broadcast per refresh.

A thread listens to ``worker.*`` events only (not the task events, which a busy farm sends by
the thousand per second). Once subscribed it asks every worker for a heartbeat at once (Celery's
``heartbeat`` control command), so the first screen lists them without waiting for the next
beat. A worker is up while its last heartbeat is younger than twice the period it announced
(Celery's own rule), and down after that or once it said goodbye (``worker-offline``).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from workers.top_state import WorkerView

log = logging.getLogger(__name__)

EXPIRE_FACTOR = 2.0  # Celery's HEARTBEAT_EXPIRE_WINDOW (200%)
RECONNECT_PAUSE = 1.0  # seconds before listening again after the broker went away
POLL = 0.2  # seconds a wait for events lasts: how soon stop() and the wakeup take effect


@dataclass
class _Seen:
    last: float  # local time of its last heartbeat
    freq: float
    offline: bool = False
    active: int | None = None
    processed: int | None = None
    loadavg: list[float] | None = None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        else None


class WorkerWatch:
    def __init__(self, app: Any) -> None:
        self.app = app
        self._seen: dict[str, _Seen] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._receiver: Any = None
        self.woken = threading.Event()  # set once the wakeup went out: answers are on the way
        self.woken_at = 0.0
        self._thread = threading.Thread(target=self._run, name="farm-top-events", daemon=True)

    def start(self) -> WorkerWatch:
        self._thread.start()
        return self

    def stop(self, timeout: float = 1.0) -> None:
        self._stop.set()
        if self._receiver is not None:
            self._receiver.should_stop = True
        self._thread.join(timeout)

    def on_event(self, event: dict[str, Any]) -> None:
        """One worker event (also called directly by the tests)."""
        kind, host = event.get("type"), event.get("hostname")
        if not isinstance(host, str) or kind not in ("worker-heartbeat", "worker-online",
                                                     "worker-offline"):
            return
        now = _number(event.get("local_received")) or time.time()
        freq = _number(event.get("freq")) or 2.0
        with self._lock:
            seen = self._seen.setdefault(host, _Seen(last=now, freq=freq))
            seen.last, seen.freq, seen.offline = now, freq, kind == "worker-offline"
            # The heartbeat a wakeup asks for carries no counts: keep the last ones known.
            for name in ("active", "processed"):
                value = event.get(name)
                if isinstance(value, int) and not isinstance(value, bool):
                    setattr(seen, name, value)
            load = event.get("loadavg")
            if isinstance(load, list) and all(_number(x) is not None for x in load):
                seen.loadavg = [round(float(x), 2) for x in load]

    def counted(self) -> bool:
        """Every worker heard from has sent a full heartbeat (with its counts)."""
        with self._lock:
            return all(w.processed is not None for w in self._seen.values())

    def workers(self, now: float | None = None) -> list[WorkerView]:
        now = time.time() if now is None else now
        with self._lock:
            seen = sorted(self._seen.items())
        return [{
            "node": host,
            "alive": not w.offline and now < w.last + w.freq * EXPIRE_FACTOR,
            "active": w.active,
            "processed": w.processed,
            "loadavg": w.loadavg,
            "heartbeat_age_s": round(max(0.0, now - w.last), 1),
        } for host, w in seen]

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with self.app.connection_for_read() as conn:
                    self._listen(conn)
                return
            except Exception as exc:  # the broker went away: listen again shortly
                log.debug("worker events: %s", exc)
                self._stop.wait(RECONNECT_PAUSE)

    def _listen(self, conn: Any) -> None:
        receiver = self.app.events.Receiver(conn, handlers={"*": self.on_event},
                                            routing_key="worker.#")
        self._receiver = receiver
        if self._stop.is_set():  # stop() came before the receiver existed
            return
        polls = 0

        def polled() -> None:
            # kombu subscribes on the first poll, not when consuming starts (where Celery's own
            # wakeup goes out, so its answers can be missed): ask on the second poll, once the
            # subscription is surely in place.
            nonlocal polls
            polls += 1
            if polls == 2:
                receiver.wakeup_workers(channel=None)
                self.woken_at = time.time()
                self.woken.set()

        receiver.on_iteration = polled
        for _ in receiver.consume(wakeup=False, safety_interval=POLL):
            pass

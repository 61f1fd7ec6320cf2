"""Prometheus in the worker processes: where their metrics files go, and the task hooks.

Every worker process on a node writes prometheus-client's multiprocess files into one directory,
FARM_STATE_DIR/metrics (or PROMETHEUS_MULTIPROC_DIR when the operator set it), and `farm metrics`
serves their sum. `farm supervise` empties it at start; Prometheus sees counters restart then,
as it does on any restart. FARM_METRICS_PORT=0 turns it all off: no files, no endpoint.

The per-task counters come from Celery's signals here, not from the task base, except the
dead-letter count, which only the base knows (a task dead-lettered on redelivery returns).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from celery.signals import task_postrun, task_prerun, worker_process_shutdown

from config.settings import Settings
from tasks.core import prom

if TYPE_CHECKING:
    from prometheus_client import Counter, Histogram

ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus-client reads it when first imported
SENT_HEADER = "farm_sent"  # Unix time the message was published (config/celery_app.py)


def metrics_dir(state_dir: Path) -> Path:
    """The node's metrics directory: PROMETHEUS_MULTIPROC_DIR if set, else under the state dir."""
    return Path(os.environ.get(ENV) or state_dir / "metrics").resolve()


def enable(s: Settings) -> Path | None:
    """Point this process (and the pool children it forks) at the node's metrics directory.
    Must run before the first metric is made; None when metrics are off."""
    if s.metrics_port == 0:
        return None
    path = metrics_dir(s.state_dir)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.environ[ENV] = str(path)
    if "prometheus_client.values" in sys.modules:
        # A library imported it first: metrics made from now on (ours) use the files all the same.
        from prometheus_client import values

        values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    return path


def clear(path: Path) -> int:
    """Remove every metrics file (at `farm supervise` start, before any worker runs)."""
    removed = 0
    if path.is_dir():
        for old in path.glob("*.db"):
            old.unlink(missing_ok=True)
            removed += 1
    return removed


def queue_wait(request: Any, now: float) -> float | None:
    """Seconds the message waited: from its send, or its due time (a retry's countdown) when
    later. None for a message without the farm's send stamp (an older producer)."""
    sent = getattr(request, SENT_HEADER, None)
    if not isinstance(sent, (int, float)) or isinstance(sent, bool):
        return None
    since = float(sent)
    eta = getattr(request, "eta", None)
    if isinstance(eta, str):
        with contextlib.suppress(ValueError):  # an unreadable eta: count from the send
            eta = datetime.fromisoformat(eta)
    if isinstance(eta, datetime):
        since = max(since, eta.timestamp())
    return max(0.0, now - since)


# task id -> perf_counter at start; a dict because io workers run tasks in threads
_started: dict[str, float] = {}
_lock = threading.Lock()

# Celery's end states -> the counter each adds to (REJECTED, a requeue, counts in none)
_ENDS = {"SUCCESS": "succeeded", "RETRY": "retried", "FAILURE": "failed"}


@dataclass(frozen=True)
class _TaskSeries:
    """One task's children of the per-task metrics: labels() takes a lock and hashes the label
    values on every call, which cost more than the increments themselves."""

    started: Counter
    queue_wait: Histogram
    runtime: Histogram
    ends: dict[str, Counter]


_series: dict[str, _TaskSeries] = {}


def _task_series(name: str) -> _TaskSeries:
    found = _series.get(name)
    if found is None:
        m = prom.metrics()
        found = _series[name] = _TaskSeries(
            m.started.labels(name), m.queue_wait.labels(name), m.runtime.labels(name),
            {state: getattr(m, end).labels(name) for state, end in _ENDS.items()})
    return found


def _on_prerun(task_id: str = "", task: Any = None, **_: Any) -> None:
    if task is None:
        return
    series = _task_series(task.name)
    series.started.inc()
    wait = queue_wait(task.request, time.time())
    if wait is not None:
        series.queue_wait.observe(wait)
    with _lock:
        _started[task_id] = time.perf_counter()


def _on_postrun(task_id: str = "", task: Any = None, state: str = "", **_: Any) -> None:
    with _lock:
        began = _started.pop(task_id, None)
    if task is None:
        return
    series = _task_series(task.name)
    if began is not None:
        series.runtime.observe(time.perf_counter() - began)
    end = series.ends.get(state)
    if end is not None:
        end.inc()


def _on_child_exit(pid: int | None = None, **_: Any) -> None:
    from prometheus_client import multiprocess

    # Only live gauges keep per-process files that must go; counters and histograms stay summed.
    multiprocess.mark_process_dead(pid or os.getpid())  # type: ignore[no-untyped-call]


def connect(s: Settings) -> None:
    """Enable metrics and connect the task hooks, in a worker before it starts."""
    if enable(s) is None:
        return
    # Loaded here, in the pool's parent, so prefork children share its pages (about 1.5 MiB
    # each otherwise, and 80 ms at each child's first task).
    import prometheus_client.multiprocess  # noqa: F401

    task_prerun.connect(_on_prerun, weak=False)
    task_postrun.connect(_on_postrun, weak=False)
    worker_process_shutdown.connect(_on_child_exit, weak=False)

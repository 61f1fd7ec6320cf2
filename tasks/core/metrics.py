"""Farm-wide task counters in the data Redis: what ran, how it ended, how long it took.

One hash, ``{prefix}:metrics:tasks``, fields ``<task>:<outcome>`` and ``<task>:ms``. Flower shows
the live view; these survive restarts and feed `farm stats` and `farm top`.

A worker process adds its tasks' counts up in memory and writes them in one round trip at most
every ``FLUSH_SECONDS`` (:class:`Tally`), not one per task: per task that round trip was an eighth
of a no-op task's time (`farm bench drain`). The counters lag the work by that much; a process
killed outright (SIGKILL, the OOM killer) loses at most that much of its counts, which are
statistics: the tasks' own records and dead letters are written before the task ends.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from typing import cast

import redis

from config.settings import Settings

log = logging.getLogger("farm.metrics")

FLUSH_SECONDS = 0.25
WARN_EVERY = 60.0  # seconds between warnings while the data Redis refuses the counts

OUTCOMES = ("ok", "retry", "deadletter", "requeued", "interrupted")


def metrics_key(s: Settings) -> str:
    return s.key("metrics", "tasks")


def _fields(task: str, outcome: str) -> tuple[str, str]:
    """The hash fields one run adds to: its outcome's count, the task's total milliseconds."""
    return f"{task}:{outcome}", f"{task}:ms"


def _write(pipe: redis.client.Pipeline, s: Settings, counts: Mapping[str, int],
           ms: Mapping[str, float]) -> None:
    key = metrics_key(s)
    for field, n in counts.items():
        pipe.hincrby(key, field, n)
    for field, total in ms.items():
        pipe.hincrbyfloat(key, field, round(total, 3))


def record(pipe: redis.client.Pipeline, s: Settings, task: str, outcome: str, ms: float) -> None:
    """One run's counts, queued on ``pipe`` at once (eager runs, tests)."""
    count, total = _fields(task, outcome)
    _write(pipe, s, {count: 1}, {total: ms})


class Tally:
    """This process's task counts not yet written: added per task, flushed by a daemon thread
    every ``FLUSH_SECONDS`` and at the process's shutdown (workers/signals.py). A write the data
    Redis refuses keeps its counts for the next one."""

    def __init__(self, client: Callable[[], redis.Redis], s: Callable[[], Settings]) -> None:
        self._client, self._settings = client, s
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._ms: defaultdict[str, float] = defaultdict(float)
        self._owner = 0  # pid whose flusher thread runs; a forked child starts its own
        self._warned_at: float | None = None  # when "not written yet" was last logged
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        # The parent's unwritten counts are the parent's to write (a prefork parent runs none).
        self._lock = threading.Lock()
        self._counts, self._ms, self._owner = Counter(), defaultdict(float), 0

    def add(self, task: str, outcome: str, ms: float) -> None:
        count, total = _fields(task, outcome)
        with self._lock:
            self._counts[count] += 1
            self._ms[total] += ms
            if self._owner != os.getpid():
                self._owner = os.getpid()
                threading.Thread(target=self._run, name="farm-metrics", daemon=True).start()

    def _run(self) -> None:
        while True:  # a daemon thread: it ends with its process (shutdown flushes first)
            time.sleep(FLUSH_SECONDS)
            self.flush()

    def flush(self) -> None:
        with self._lock:
            counts, ms = self._counts, self._ms
            self._counts, self._ms = Counter(), defaultdict(float)
        if not counts and not ms:
            return
        try:
            pipe = self._client().pipeline()  # all of them or none: no count twice
            _write(pipe, self._settings(), counts, ms)
            pipe.execute()
        except (redis.RedisError, OSError) as exc:  # kept for the next flush
            with self._lock:
                self._counts.update(counts)
                for field, total in ms.items():
                    self._ms[field] += total
            now = time.monotonic()  # warned once a minute, not four times a second
            if self._warned_at is None or now - self._warned_at >= WARN_EVERY:
                self._warned_at = now
                log.warning("task counters not written yet: %s", exc)
        else:
            self._warned_at = None


def incr(client: redis.Redis, s: Settings, name: str, amount: int = 1) -> None:
    """A free-form counter (pushes sent, tokens pruned, ...) beside the task counters."""
    client.hincrby(s.key("metrics", "counters"), name, amount)


def read(client: redis.Redis, s: Settings) -> dict[str, dict[str, float]]:
    """task -> {ok, retry, deadletter, ms}."""
    out: dict[str, dict[str, float]] = defaultdict(lambda: dict.fromkeys((*OUTCOMES, "ms"), 0))
    for field, value in cast("dict[str, str]", client.hgetall(metrics_key(s))).items():
        task, _, what = field.rpartition(":")
        out[task][what] = float(value)
    return dict(out)


def counters(client: redis.Redis, s: Settings) -> dict[str, int]:
    raw = cast("dict[str, str]", client.hgetall(s.key("metrics", "counters")))
    return {k: int(v) for k, v in raw.items()}

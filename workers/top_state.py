"""What `farm top` shows, as plain data: one sample of the farm's Redis state, and the snapshot
two samples make (rates).

A sample costs one pipelined round trip per server, whatever the farm's size: on the broker each
queue's depth and its oldest message (kombu LPUSHes, workers pop from the right, so the oldest is
the list's last element), and the unacked hash's size; on the data Redis the task counters the
task base keeps (tasks/core/metrics.py), the free-form counters and the dead-letter count. On a
RabbitMQ broker the depths come from passive declares (config/rabbitmq.py), which give neither
the oldest message's age nor how many messages workers hold: those show as unknown.

Rates are counter differences between two samples. The counters are per task, not per queue, so a
queue's out rate is the runs that ended (ok, retry, dead letter) of the tasks routed to it
(config/queues.py; a task sent elsewhere, such as an inactive follower's fan-out chunk on
``feeds_batch``, counts on its routed queue), and its in rate is that plus the change in depth.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Any, TypedDict, cast

import redis

from config.queues import QUEUES, ROUTES
from config.rabbitmq import queue_depths as amqp_queue_depths
from config.settings import Settings
from tasks.core import metrics
from tasks.core.deadletter import DeadLetterStore

# Runs that took a message off its queue for good: a retry publishes a new message (counted in
# again), while "requeued" and "interrupted" runs put the same message back.
FINISHED = ("ok", "retry", "deadletter")
# kombu's Redis transport keeps delivered, not yet acked messages in this hash.
UNACKED_KEY = "unacked"
# The header every farm publish carries: when it was sent, in Unix seconds (config/celery_app.py).
# A message without it (another producer's, or sent before the stamp existed) has no known age.
SENT_HEADER = "farm_sent"


@dataclass(frozen=True)
class Sample:
    """The farm's counters at one instant."""

    at: float  # wall clock (for message ages)
    mono: float  # monotonic clock (for rates)
    depths: dict[str, int]
    oldest_sent: dict[str, float | None]  # queue -> its oldest message's sent time, if stamped
    inflight: int | None  # None: the broker does not say (RabbitMQ's passive declares)
    tasks: dict[str, dict[str, float]]  # task -> outcome -> runs; and "ms" -> total run time
    counters: dict[str, int]
    deadletters: int


def sent_time(raw: bytes | str | None) -> float | None:
    """When a raw kombu message was published, from its headers; None when not stamped or when
    the message is not one kombu would read."""
    if raw is None:
        return None
    try:
        message = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    headers = message.get("headers") if isinstance(message, dict) else None
    if not isinstance(headers, dict):
        return None
    value = headers.get(SENT_HEADER)
    # bool is an int: a stray True is not a time
    if isinstance(value, (int, float)) and not isinstance(value, bool) \
            and math.isfinite(value) and value > 0:
        return float(value)
    return None


def parse_tasks(raw: dict[str, str]) -> dict[str, dict[str, float]]:
    """The task counters hash (``<task>:<outcome>`` and ``<task>:ms``) by task; a field that is
    not a number (written by hand, say) is left out rather than stopping the view."""
    out: dict[str, dict[str, float]] = {}
    for name, value in raw.items():
        task, _, what = name.rpartition(":")
        try:
            number = float(value)
        except ValueError:
            continue
        if task and math.isfinite(number):
            out.setdefault(task, dict.fromkeys((*metrics.OUTCOMES, "ms"), 0.0))[what] = number
    return out


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def sample(broker: redis.Redis | str, data: redis.Redis, s: Settings) -> Sample:
    """One sample: the broker's queues (a Redis pipeline; or, for an amqp:// URL, RabbitMQ's
    passive declares), then one pipeline on the data Redis (read-only on both)."""
    if isinstance(broker, str):
        depths = amqp_queue_depths(broker, QUEUES)
        # RabbitMQ says how many are ready, not how old the oldest is or how many are held
        oldest: dict[str, float | None] = dict.fromkeys(QUEUES)
        inflight: int | None = None
    else:
        pipe = broker.pipeline(transaction=False)
        for q in QUEUES:
            pipe.llen(q)
            pipe.lindex(q, -1)  # the oldest: kombu LPUSHes, consumers pop from the right
        pipe.hlen(UNACKED_KEY)
        replies = pipe.execute()
        depths = {q: int(replies[2 * i]) for i, q in enumerate(QUEUES)}
        oldest = {q: sent_time(replies[2 * i + 1]) for i, q in enumerate(QUEUES)}
        inflight = int(replies[-1])
    at, mono = time.time(), time.monotonic()

    pipe = data.pipeline(transaction=False)
    pipe.hgetall(metrics.metrics_key(s))
    pipe.hgetall(s.key("metrics", "counters"))
    pipe.zcard(DeadLetterStore(data, s).index)
    raw_tasks, raw_counters, deadletters = pipe.execute()
    counters = {str(k): n for k, v in cast("dict[str, str]", raw_counters).items()
                if (n := _int(v)) is not None}
    return Sample(at=at, mono=mono, depths=depths, oldest_sent=oldest,
                  inflight=inflight, tasks=parse_tasks(raw_tasks), counters=counters,
                  deadletters=int(deadletters))


class QueueView(TypedDict):
    depth: int
    in_per_s: float | None  # None: only one sample so far
    out_per_s: float | None
    oldest_age_s: float | None  # None: empty, or its oldest message has no sent time


class TaskView(TypedDict):
    ok_per_s: float | None
    retry_per_s: float | None
    deadletter_per_s: float | None
    mean_ms: float | None  # over the runs between the two samples, else over all runs
    ok: int  # totals since the counters began
    retry: int
    deadletter: int


class WorkerView(TypedDict):
    node: str
    alive: bool
    active: int | None  # tasks running, from its last full heartbeat
    processed: int | None
    loadavg: list[float] | None
    heartbeat_age_s: float | None


class Snapshot(TypedDict):
    time: float
    interval_s: float | None  # between the two samples the rates come from
    queues: dict[str, QueueView]
    inflight: int | None  # delivered to a worker, not yet acked (None: the broker does not say)
    tasks: dict[str, TaskView]
    failure_rate: float | None  # dead-lettered / finished for good, between the samples
    deadletters: int
    deadletters_new: int | None  # dead letters added between the samples (net of purges)
    counters: dict[str, int]
    workers: list[WorkerView]


def _rate(new: float, old: float, seconds: float) -> float:
    # A counter that went down was reset (its hash deleted): no negative rates.
    return max(0.0, new - old) / seconds


def snapshot(cur: Sample, prev: Sample | None = None,
             workers: list[WorkerView] | None = None) -> Snapshot:
    """What the view shows: ``cur``'s levels, and rates against ``prev`` when given."""
    seconds = cur.mono - prev.mono if prev is not None else 0.0
    rated = prev is not None and seconds > 0
    zero = dict.fromkeys((*metrics.OUTCOMES, "ms"), 0.0)

    tasks: dict[str, TaskView] = {}
    out_by_queue: dict[str, float] = dict.fromkeys(QUEUES, 0.0)
    ended = dead = 0.0
    for name, now in sorted(cur.tasks.items()):
        before = prev.tasks.get(name, zero) if prev is not None else zero
        runs = sum(max(0.0, now[o] - before[o]) for o in metrics.OUTCOMES)
        ms = max(0.0, now["ms"] - before["ms"])
        if not (rated and runs):  # no run in between: the mean over every run so far
            runs, ms = sum(now[o] for o in metrics.OUTCOMES), now["ms"]
        view: TaskView = {
            "ok_per_s": None, "retry_per_s": None, "deadletter_per_s": None,
            "mean_ms": round(ms / runs, 1) if runs else None,
            "ok": int(now["ok"]), "retry": int(now["retry"]), "deadletter": int(now["deadletter"]),
        }
        if rated:
            view["ok_per_s"] = round(_rate(now["ok"], before["ok"], seconds), 2)
            view["retry_per_s"] = round(_rate(now["retry"], before["retry"], seconds), 2)
            view["deadletter_per_s"] = round(
                _rate(now["deadletter"], before["deadletter"], seconds), 2)
            out = sum(_rate(now[o], before[o], seconds) for o in FINISHED)
            if name in ROUTES:
                out_by_queue[ROUTES[name]] += out
            died = max(0.0, now["deadletter"] - before["deadletter"])
            dead += died
            ended += max(0.0, now["ok"] - before["ok"]) + died
        tasks[name] = view

    queues: dict[str, QueueView] = {}
    for q in QUEUES:
        sent = cur.oldest_sent.get(q)
        age = None if sent is None else round(max(0.0, cur.at - sent), 1)
        view_q: QueueView = {"depth": cur.depths[q], "in_per_s": None, "out_per_s": None,
                             "oldest_age_s": age}
        if rated and prev is not None:
            out = out_by_queue[q]
            # What came in is what went out plus what the queue grew by.
            grew = (cur.depths[q] - prev.depths.get(q, 0)) / seconds
            view_q["out_per_s"] = round(out, 2)
            view_q["in_per_s"] = round(max(0.0, out + grew), 2)
        queues[q] = view_q

    return {
        "time": round(cur.at, 3),
        "interval_s": round(seconds, 3) if rated else None,
        "queues": queues,
        "inflight": cur.inflight,
        "tasks": tasks,
        "failure_rate": round(dead / ended, 4) if rated and ended else None,
        "deadletters": cur.deadletters,
        "deadletters_new": cur.deadletters - prev.deadletters if rated and prev else None,
        "counters": dict(sorted(cur.counters.items())),
        "workers": workers or [],
    }

"""Prometheus metrics every worker process writes: per task, and the domains' own counters.

The metrics are made on first use, not at import: prometheus-client picks its value store when it
is first imported, and a worker must have pointed PROMETHEUS_MULTIPROC_DIR at the node's metrics
directory by then (workers/metrics.py does it before any task runs), so each process, prefork
children included, writes its own files and `farm metrics` serves their sum. A process that never
set it (a test, a one-off command) keeps them in memory, in :data:`REGISTRY`.

Labels are bounded: task names are the farm's own, reasons and outcomes come from fixed sets
(anything else is counted as ``other``), never from a message or a remote server's free text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Histogram

# Seconds; a resize takes tens of milliseconds, a slow cross-post tens of seconds.
RUNTIME_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                   120.0, 300.0)
# Seconds from sent (or due, for a retry) to started; minutes mean the farm is behind.
WAIT_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)

# Why the task base dead-lettered a task (tasks/core/base.py).
DEADLETTER_REASONS = frozenset({"redelivered", "exhausted", "permanent", "error"})
# Messages the consumer could not make a task run of (workers/consumer.py), dead-lettered before
# any task: no task label (their task names are the sender's, unbounded).
MESSAGE_REASONS = frozenset({"undecodable", "bad_protocol", "unknown_task", "too_large"})
# Why an upload was refused, from the start of ImageRefused's one line (tasks/photos/imaging.py).
REFUSAL_PATTERNS = (
    ("empty", re.compile(r"empty file")),
    ("not_an_image", re.compile(r"not an image")),
    ("too_large", re.compile(r"over the|decompression bomb|pixels", re.IGNORECASE)),
    ("unsupported", re.compile(r"unsupported")),
    ("corrupt", re.compile(r"corrupt|truncated|no pixels")),
)
REFUSAL_REASONS = frozenset({name for name, _ in REFUSAL_PATTERNS} | {"other"})
# Apple's reasons (APNs provider API), plus the farm's own words for no answer.
PUSH_REASONS = frozenset({
    "BadCollapseId", "BadDeviceToken", "BadExpirationDate", "BadMessageId", "BadPriority",
    "BadTopic", "DeviceTokenNotForTopic", "DuplicateHeaders", "IdleTimeout", "InvalidPushType",
    "MissingDeviceToken", "MissingTopic", "PayloadEmpty", "TopicDisallowed", "BadCertificate",
    "BadCertificateEnvironment", "ExpiredProviderToken", "Forbidden", "InvalidProviderToken",
    "MissingProviderToken", "UnrelatedKeyIdInToken", "BadPath", "MethodNotAllowed",
    "ExpiredToken", "Unregistered", "PayloadTooLarge", "TooManyProviderTokenUpdates",
    "TooManyRequests", "InternalServerError", "ServiceUnavailable", "Shutdown",
})
CROSSPOST_NETWORKS = frozenset({"twitter", "facebook"})
CROSSPOST_OUTCOMES = frozenset({"posted", "already_posted", "reconciled", "skipped"})
WEBHOOK_OUTCOMES = frozenset({"sent", "failed", "refused", "paused", "wait", "unreadable"})


@dataclass(frozen=True)
class Metrics:
    registry: CollectorRegistry
    started: Counter
    succeeded: Counter
    retried: Counter
    failed: Counter
    dead_lettered: Counter
    messages_dead_lettered: Counter
    runtime: Histogram
    queue_wait: Histogram
    photos_processed: Counter
    photos_refused: Counter
    fanout_written: Counter
    pushes_sent: Counter
    pushes_failed: Counter
    push_tokens_pruned: Counter
    crossposts: Counter
    webhook_deliveries: Counter


_metrics: Metrics | None = None


def metrics() -> Metrics:
    """This process's metrics, made on first use (see the module docstring)."""
    global _metrics
    if _metrics is None:
        _metrics = _build()
        _zeroes(_metrics)
    return _metrics


def _zeroes(m: Metrics) -> None:
    """Every known reason and outcome at 0 from the start, so a rate() over them has a series
    before the first event (and the dashboard's queries find every series a farm can have)."""
    for reason in REFUSAL_REASONS:
        m.photos_refused.labels(reason)
    for reason in PUSH_REASONS | {"other"}:
        m.pushes_failed.labels(reason)
    for network in CROSSPOST_NETWORKS:
        for outcome in CROSSPOST_OUTCOMES:
            m.crossposts.labels(network, outcome)
    for outcome in WEBHOOK_OUTCOMES:
        m.webhook_deliveries.labels(outcome)
    for reason in MESSAGE_REASONS:
        m.messages_dead_lettered.labels(reason)


def _build() -> Metrics:
    from prometheus_client import CollectorRegistry, Counter, Histogram

    reg = CollectorRegistry()
    task = ("task",)
    return Metrics(
        registry=reg,
        started=Counter("farm_task_started", "Tasks started, per task name", task,
                        registry=reg),
        succeeded=Counter("farm_task_succeeded", "Tasks that returned", task, registry=reg),
        retried=Counter("farm_task_retried", "Task runs that ended in a retry", task,
                        registry=reg),
        failed=Counter("farm_task_failed", "Task runs that raised (not a retry)", task,
                       registry=reg),
        dead_lettered=Counter("farm_task_dead_lettered", "Tasks written to the dead-letter "
                              "store, per task and reason", ("task", "reason"), registry=reg),
        messages_dead_lettered=Counter("farm_messages_dead_lettered", "Messages no task could "
                                       "be run from (undecodable, bad protocol, unknown task, "
                                       "too large), per reason", ("reason",), registry=reg),
        runtime=Histogram("farm_task_runtime_seconds", "Task run time", task,
                          buckets=RUNTIME_BUCKETS, registry=reg),
        queue_wait=Histogram("farm_task_queue_wait_seconds", "Time from the message's send "
                             "(or its due time, for a retry) to the task's start", task,
                             buckets=WAIT_BUCKETS, registry=reg),
        photos_processed=Counter("farm_photos_processed", "Photos whose variants were made "
                                 "and recorded", registry=reg),
        photos_refused=Counter("farm_photos_refused", "Uploads refused, per reason",
                               ("reason",), registry=reg),
        fanout_written=Counter("farm_fanout_followers_written", "Feed entries written by "
                               "fan-out chunks", registry=reg),
        pushes_sent=Counter("farm_pushes_sent", "Pushes APNs accepted", registry=reg),
        pushes_failed=Counter("farm_pushes_failed", "Pushes not delivered, per APNs reason",
                              ("reason",), registry=reg),
        push_tokens_pruned=Counter("farm_push_tokens_pruned", "Dead device tokens deleted",
                                   registry=reg),
        crossposts=Counter("farm_crossposts", "Cross-posts, per network and outcome",
                           ("network", "outcome"), registry=reg),
        webhook_deliveries=Counter("farm_webhook_deliveries", "Webhook deliveries, per "
                                   "outcome", ("outcome",), registry=reg),
    )


def _bounded(value: str, allowed: frozenset[str]) -> str:
    return value if value in allowed else "other"


# -- the task base and the worker's signal hooks ------------------------------------------------

def dead_lettered(task: str, reason: str) -> None:
    metrics().dead_lettered.labels(task, _bounded(reason, DEADLETTER_REASONS)).inc()


def message_dead_lettered(reason: str, n: int = 1) -> None:
    """A message the consumer set aside (``reason`` as in its dead letter: "bad protocol"...)."""
    metrics().messages_dead_lettered.labels(
        _bounded(reason.replace(" ", "_"), MESSAGE_REASONS)).inc(n)


# -- the domains' counters (one call each, where the outcome is known) ---------------------------

def refusal_reason(message: str) -> str:
    """An upload's refusal line as one of REFUSAL_REASONS."""
    for name, pattern in REFUSAL_PATTERNS:
        if pattern.search(message):
            return name
    return "other"


def photo_processed() -> None:
    metrics().photos_processed.inc()


def photo_refused(message: str) -> None:
    metrics().photos_refused.labels(refusal_reason(message)).inc()


def fanout_written(entries: int) -> None:
    if entries > 0:
        metrics().fanout_written.inc(entries)


def pushes(sent: int, pruned: int, failed: Mapping[str, int]) -> None:
    m = metrics()
    if sent:
        m.pushes_sent.inc(sent)
    if pruned:
        m.push_tokens_pruned.inc(pruned)
    for reason, n in failed.items():
        m.pushes_failed.labels(_bounded(reason, PUSH_REASONS)).inc(n)


def crosspost(network: str, outcome: str) -> None:
    metrics().crossposts.labels(_bounded(network, CROSSPOST_NETWORKS),
                                _bounded(outcome.replace(" ", "_"), CROSSPOST_OUTCOMES)).inc()


def webhook_delivery(outcome: str) -> None:
    metrics().webhook_deliveries.labels(_bounded(outcome, WEBHOOK_OUTCOMES)).inc()

"""Every queue and every task route, in one place.

One queue per job kind, and a low-priority ``*_batch`` queue beside the kinds that have batch work
(backfills, rebuilds, replays). Batch queues are served by their own workers, so a user's own post
never waits behind a backfill: Redis message priorities are approximate, separate queues are not.
Task names are stable strings; the web tier sends by name and never imports worker code.
"""

from __future__ import annotations

import re
from enum import StrEnum


class Q(StrEnum):
    PHOTOS = "photos"
    PHOTOS_BATCH = "photos_batch"
    FEEDS = "feeds"
    FEEDS_BATCH = "feeds_batch"
    PUSH = "push"
    SOCIAL = "social"
    WEBHOOKS = "webhooks"
    WEBHOOKS_BATCH = "webhooks_batch"
    MAINTENANCE = "maintenance"  # beat's batch jobs and diagnostics


QUEUES: tuple[str, ...] = tuple(q.value for q in Q)

# Stable task name -> queue. A task not listed here cannot be declared (tasks.base checks).
ROUTES: dict[str, str] = {
    # photos
    "photos.process": Q.PHOTOS,
    "photos.reprocess": Q.PHOTOS_BATCH,
    # feeds
    "feeds.fanout": Q.FEEDS,
    "feeds.fanout_chunk": Q.FEEDS,  # inactive followers' chunks are sent to FEEDS_BATCH
    "feeds.follow": Q.FEEDS,
    "feeds.unfollow": Q.FEEDS,
    "feeds.photo_deleted": Q.FEEDS_BATCH,
    "feeds.delete_chunk": Q.FEEDS_BATCH,
    "feeds.rebuild": Q.FEEDS_BATCH,
    "feeds.activity": Q.FEEDS,
    # network-bound jobs
    "push.notify": Q.PUSH,
    "social.crosspost": Q.SOCIAL,
    "webhooks.deliver": Q.WEBHOOKS,
    "webhooks.replay": Q.WEBHOOKS_BATCH,
    # batch jobs run by beat (and by hand: `farm batch NAME`)
    "batch.deadletter_report": Q.MAINTENANCE,
    "batch.sweep": Q.MAINTENANCE,
    "batch.feed_trim": Q.MAINTENANCE,
    "batch.fanout_sweep": Q.MAINTENANCE,
    "batch.feed_rebuild": Q.MAINTENANCE,  # on demand only: `farm batch feed-rebuild USER_ID ...`
    "batch.photo_sweep": Q.MAINTENANCE,
    # diagnostics: `farm ping` sends diag.ping to every queue explicitly
    "diag.ping": Q.MAINTENANCE,
    "diag.sleep": Q.MAINTENANCE,
    "diag.flaky": Q.MAINTENANCE,
}


def queue_for(task_name: str) -> str:
    try:
        return ROUTES[task_name]
    except KeyError:
        raise KeyError(f"task {task_name!r} has no route in config/queues.py") from None


def celery_routes() -> dict[str, dict[str, str]]:
    return {name: {"queue": str(queue)} for name, queue in ROUTES.items()}


def check_queues(names: list[str]) -> list[str]:
    """The names, if every one is a declared queue; ValueError naming the unknown ones."""
    unknown = [q for q in names if q not in QUEUES]
    if unknown:
        raise ValueError(f"unknown queue(s) {', '.join(unknown)}; known: {', '.join(QUEUES)}")
    return names


# RabbitMQ's delayed delivery (kombu's native_delayed_delivery, a retry's countdown) routes a
# message with its delay's 28 bits in front of the queue's key: "0.0.[...].1.maintenance".
_DELAY_BITS = re.compile(r"(?:[01]\.){28}")


def queue_of(routing_key: str) -> str:
    """The queue a message was routed to, from its routing key (a delayed message's too)."""
    m = _DELAY_BITS.match(routing_key)
    return routing_key[m.end():] if m else routing_key

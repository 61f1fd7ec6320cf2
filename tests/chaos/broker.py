"""What the broker still holds, anywhere a message can be: queued, unacked (running, prefetched, or
held by a dead worker until the visibility sweep), in a consumer's in-flight list (reliable
fetch's blocking wait, config/reliable_redis.py), or set aside as unparsable. Empty everywhere,
for a while, is drained."""

from __future__ import annotations

import json
import time

import redis

from config.queues import QUEUES

PRIORITY_SEP = "\x06\x16"  # kombu's Redis transport: queue key for priority N is f"{q}{SEP}{N}"
PRIORITY_STEPS = (3, 6, 9)  # besides 0, the bare queue name
INFLIGHT_INDEX = "_kombu.inflight"  # config/reliable_redis.py's in-flight lists
UNPARSABLE = "_kombu.unparsable"
QUEUE_KEYS = [*QUEUES, *(f"{q}{PRIORITY_SEP}{p}" for q in QUEUES for p in PRIORITY_STEPS)]


def backlog(r: redis.Redis) -> dict[str, int]:
    """Where messages are held, and how many (nothing listed: none anywhere)."""
    pipe = r.pipeline(transaction=False)
    for key in QUEUE_KEYS:
        pipe.llen(key)
    pipe.hlen("unacked")
    pipe.llen(UNPARSABLE)
    pipe.hkeys(INFLIGHT_INDEX)
    *lengths, unacked, unparsable, inflight = pipe.execute()
    out = {k.split(PRIORITY_SEP)[0]: n for k, n in zip(QUEUE_KEYS, lengths, strict=True) if n}
    held = sum(int(r.llen(k)) for k in inflight)
    out.update({k: v for k, v in (("unacked", unacked), ("unparsable", unparsable),
                                  ("inflight", held)) if v})
    return out


def pending_ids(r: redis.Redis) -> set[str]:
    """Ids of the messages the broker still holds (for the audit, when not drained)."""
    raws: list[bytes] = []
    for key in [*QUEUE_KEYS, *(k.decode() for k in r.hkeys(INFLIGHT_INDEX)), UNPARSABLE]:
        raws += r.lrange(key, 0, -1)
    ids = {json.loads(raw)["headers"]["id"] for raw in raws}
    ids |= {json.loads(raw)[0]["headers"]["id"] for raw in r.hvals("unacked")}
    return ids


def wait_drained(r: redis.Redis, timeout: float, settle: float = 1.5) -> dict[str, int]:
    """Until the broker holds nothing for ``settle`` seconds: {} when drained, else what is
    left when ``timeout`` runs out. A broker restarting in between just counts as not empty."""
    deadline = time.monotonic() + timeout
    empty_since: float | None = None
    left: dict[str, int] = {"unknown": 1}
    while time.monotonic() < deadline:
        try:
            left = backlog(r)
        except redis.RedisError:
            left = {"broker unreachable": 1}
        if left:
            empty_since = None
        elif empty_since is None:
            empty_since = time.monotonic()
        elif time.monotonic() - empty_since >= settle:
            return {}
        time.sleep(0.1)
    return left

"""The dead-letter store: tasks that failed for good, kept for an operator to inspect and replay.

Layout in the data Redis: a hash ``{prefix}:deadletter:items`` of id -> JSON record, and a sorted
set ``{prefix}:deadletter:index`` of id scored by failure time. The id is the Celery task id, so a
task dead-lettered twice (a redelivery after the record was written) leaves one record.

Messages that never became a task run are kept too (workers/consumer.py): a body that cannot be
decoded, an unknown task name, a message that breaks Celery's protocol, arguments over the size
limit. Their record holds the body as received, capped, in ``body`` (its full size in ``size``)
and no arguments; they cannot be replayed. So do messages reliable fetch set aside as not being
kombu's (config/reliable_redis.py), adopted from the broker by :func:`adopt_unparsable`.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, cast

import redis

from config.reliable_redis import UNPARSABLE
from config.settings import Settings
from tasks.core import metrics
from tasks.core.text import clip

# Reasons of messages that never ran as a task: kept with their body, never replayed.
MESSAGE_REASONS = ("undecodable", "unknown task", "bad protocol", "too large")
# A stored body or traceback is at most this many characters: an operator reads the start of a
# hostile 5 MB body as well as the whole of it, and one message must never write megabytes.
MAX_BODY_CHARS = 64 * 1024
MAX_TRACEBACK_CHARS = 16 * 1024
MAX_ERROR_CHARS = 1000


@dataclass
class DeadLetter:
    id: str
    task: str
    queue: str
    args: list[Any]
    kwargs: dict[str, Any]
    # permanent | exhausted | redelivered | error, or one of MESSAGE_REASONS
    reason: str
    error: str  # "TypeName: message", one line
    traceback: str
    attempts: int
    failed_at: float = field(default_factory=time.time)
    replays: int = 0
    # A message that never ran: its body as received, capped (MAX_BODY_CHARS); a task refused
    # for arguments too big to keep: their start. Either way, nothing to replay.
    body: str = ""
    size: int = 0  # the body's (or the arguments' JSON) size in bytes before capping

    def __post_init__(self) -> None:
        self.error = clip(self.error, MAX_ERROR_CHARS)
        self.traceback = _tail(self.traceback, MAX_TRACEBACK_CHARS)
        self.body = clip(self.body, MAX_BODY_CHARS)

    @property
    def replayable(self) -> bool:
        """Only a task's own arguments can be sent again; a body kept as received cannot."""
        return self.reason not in MESSAGE_REASONS and not self.body

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str) -> DeadLetter:
        """Records written before a field existed load with its default; fields this version
        does not know (written by a newer one) are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in json.loads(raw).items() if k in known})


def _tail(text: str, limit: int) -> str:
    """A traceback's end is what says what went wrong: keep that when it is too long."""
    if len(text) <= limit:
        return text
    return f"[{len(text) - limit + 40:,} chars left off]\n" + text[-(limit - 40):]


class NotReplayable(ValueError):
    """A dead letter kept as a raw message: there are no task arguments to send again."""


class DeadLetterStore:
    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.r = client
        self.settings = settings
        self.items = settings.key("deadletter", "items")
        self.index = settings.key("deadletter", "index")

    def record(self, entry: DeadLetter) -> None:
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(self.items, entry.id, entry.to_json())
        pipe.zadd(self.index, {entry.id: entry.failed_at})
        pipe.execute()

    def count(self) -> int:
        return int(self.r.zcard(self.index))

    def ids(self, limit: int | None = None, newest_first: bool = True) -> list[str]:
        end = -1 if limit is None else limit - 1
        if newest_first:
            return list(cast("list[str]", self.r.zrevrange(self.index, 0, end)))
        return list(cast("list[str]", self.r.zrange(self.index, 0, end)))

    def list(self, limit: int = 50) -> list[DeadLetter]:
        ids = self.ids(limit)
        if not ids:
            return []
        raws = cast("list[str | None]", self.r.hmget(self.items, ids))
        return [DeadLetter.from_json(raw) for raw in raws if raw]

    def get(self, entry_id: str) -> DeadLetter | None:
        raw = cast("str | None", self.r.hget(self.items, entry_id))
        return DeadLetter.from_json(raw) if raw else None

    def remove(self, entry_id: str) -> bool:
        pipe = self.r.pipeline(transaction=True)
        pipe.hdel(self.items, entry_id)
        pipe.zrem(self.index, entry_id)
        removed, _ = pipe.execute()
        return bool(removed)

    def purge(self, older_than: float | None = None) -> int:
        """Remove every record, or those that failed before ``older_than`` (epoch seconds)."""
        if older_than is None:
            n = self.count()
            self.r.delete(self.items, self.index)
            return n
        ids = list(cast("list[str]", self.r.zrangebyscore(self.index, "-inf", f"({older_than}")))
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            pipe = self.r.pipeline(transaction=True)
            pipe.hdel(self.items, *chunk)
            pipe.zrem(self.index, *chunk)
            pipe.execute()
        return len(ids)

    def replay(self, entry_id: str, send: Any) -> str:
        """Send the task again by name, to its queue, with its arguments; returns the new task id.

        Sent before the record is removed: a crash in between replays twice at worst, which every
        farm task tolerates (delivery is at least once anyway).
        """
        entry = self.get(entry_id)
        if entry is None:
            raise KeyError(entry_id)
        if not entry.replayable:
            raise NotReplayable(
                f"{entry_id} is a message that never ran ({entry.reason}): it has no task "
                "arguments to send again; read it with `farm deadletter show`, then purge it")
        result = send(entry.task, args=entry.args, kwargs=entry.kwargs, queue=entry.queue,
                      headers={"farm_replay_of": entry.id, "farm_replays": entry.replays + 1})
        self.remove(entry_id)
        return str(result.id)


def adopt_unparsable(broker: redis.Redis, store: DeadLetterStore, limit: int = 1000) -> int:
    """Move what reliable fetch set aside as not kombu's (``_kombu.unparsable`` on the broker)
    into the dead-letter store, so it is counted, listed and purged like every failure; how many.

    Recorded before it is taken off the broker, under an id made from its bytes: a crash in
    between records it again under the same id, never loses it. Which queue it came from is
    not known (the fetch script keeps only the raw message)."""
    raws: list[Any] = list(broker.lrange(UNPARSABLE, -limit, -1))  # bytes, or str if decoded
    for raw in reversed(raws):  # oldest first
        data = raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else raw
        digest = hashlib.sha256(data).hexdigest()[:24]
        store.record(DeadLetter(
            id=f"unparsable-{digest}", task="", queue="", args=[], kwargs={},
            reason="undecodable",
            error="not a kombu message: set aside by the broker's reliable fetch, never run",
            traceback="", attempts=1, body=data[:MAX_BODY_CHARS].decode("utf-8", "replace"),
            size=len(data)))
        broker.lrem(UNPARSABLE, 1, raw)
    if raws:
        metrics.incr(store.r, store.settings, "messages.undecodable", len(raws))
    return len(raws)

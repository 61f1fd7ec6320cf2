"""The dead-letter store: tasks that failed for good, kept for an operator to inspect and replay.

Layout in the data Redis: a hash ``{prefix}:deadletter:items`` of id -> JSON record, and a sorted
set ``{prefix}:deadletter:index`` of id scored by failure time. The id is the Celery task id, so a
task dead-lettered twice (a redelivery after the record was written) leaves one record.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import redis

from config.settings import Settings


@dataclass
class DeadLetter:
    id: str
    task: str
    queue: str
    args: list[Any]
    kwargs: dict[str, Any]
    reason: str  # permanent | exhausted | redelivered
    error: str  # "TypeName: message", one line
    traceback: str
    attempts: int
    failed_at: float = field(default_factory=time.time)
    replays: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str) -> DeadLetter:
        return cls(**json.loads(raw))


class DeadLetterStore:
    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.r = client
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
        result = send(entry.task, args=entry.args, kwargs=entry.kwargs, queue=entry.queue,
                      headers={"farm_replay_of": entry.id, "farm_replays": entry.replays + 1})
        self.remove(entry_id)
        return str(result.id)

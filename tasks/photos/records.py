"""The photo record in the data Redis: ``{prefix}:photo:{id}``, a hash the web tier can read.

Fields: status (processing / ready / failed), owner_id, original_key, version (bumped by each
reprocess, and put in variant URLs so a CDN never serves the old bytes), variants (JSON:
name -> key, width, height, bytes, url), reason (one line, when failed), timings (JSON: phase ->
ms), followons ("1" once fan-out, cross-posts and webhooks were sent), attempt (of the run now
or last processing it: 1, then 2 for its first retry...), updated_at.

Every run ends its record ready or failed. ``{prefix}:photos:processing`` indexes the records in
processing (photo id -> when its latest attempt started), written in the same step as the status,
so the photo-sweep job finds the ones no run will end without scanning every photo (stuck.py).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, cast

import redis
from redis.client import Pipeline

from config.settings import Settings
from tasks.core.scripts import Script

PROCESSING, READY, FAILED = "processing", "ready", "failed"

FAIL = Script(__package__, "fail_record.lua")
MAX_REASON = 500  # characters of a failure's reason: one line the web tier can show


@dataclass
class PhotoRecord:
    photo_id: int
    status: str
    owner_id: int
    original_key: str
    version: int = 1
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    reason: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    followons: bool = False
    attempt: int = 1
    updated_at: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def one_line(reason: str) -> str:
    return " ".join(reason.split())[:MAX_REASON]


class PhotoRecords:
    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.r = client
        self.s = settings
        self.index = settings.key("photos", "processing")

    def key(self, photo_id: int) -> str:
        return self.s.key("photo", photo_id)

    def get(self, photo_id: int) -> PhotoRecord | None:
        raw = cast("dict[str, str]", self.r.hgetall(self.key(photo_id)))
        if not raw:
            return None
        return PhotoRecord(
            photo_id=photo_id,
            status=raw.get("status", ""),
            owner_id=int(raw.get("owner_id", 0)),
            original_key=raw.get("original_key", ""),
            version=int(raw.get("version", 1)),
            variants=json.loads(raw.get("variants", "{}")),
            reason=raw.get("reason", ""),
            timings=json.loads(raw.get("timings", "{}")),
            followons=raw.get("followons") == "1",
            attempt=int(raw.get("attempt", 1)),
            updated_at=float(raw.get("updated_at", 0)),
        )

    def _set(self, photo_id: int, pipe: Pipeline | None = None, **fields: Any) -> None:
        fields["updated_at"] = f"{time.time():.3f}"
        (pipe or self.r).hset(self.key(photo_id),
                              mapping={k: str(v) for k, v in fields.items()})

    def start(self, photo_id: int, owner_id: int, original_key: str, version: int,
              attempt: int = 1) -> None:
        """Processing, and listed as such from now (each attempt restarts the sweep's clock)."""
        pipe = self.r.pipeline(transaction=True)
        self._set(photo_id, pipe, status=PROCESSING, owner_id=owner_id,
                  original_key=original_key, version=version, reason="", attempt=attempt)
        pipe.zadd(self.index, {str(photo_id): time.time()})
        pipe.execute()

    def ready(self, photo_id: int, variants: dict[str, dict[str, Any]],
              timings: dict[str, float]) -> None:
        pipe = self.r.pipeline(transaction=True)
        self._set(photo_id, pipe, status=READY, reason="",
                  variants=json.dumps(variants, separators=(",", ":")),
                  timings=json.dumps({k: round(v, 1) for k, v in timings.items()}))
        pipe.zrem(self.index, str(photo_id))
        pipe.execute()

    def failed(self, photo_id: int, reason: str) -> bool:
        """Failed with ``reason``, by the run that started it: True, or False if the record is
        ready (another delivery of the message finished it: a late failure changes nothing)."""
        return self._fail(photo_id, reason, "run")

    def failed_late(self, photo_id: int, reason: str, *, create: bool) -> bool:
        """Failed with ``reason``, known only from the dead letter (retries exhausted, an invalid
        argument, the redelivery cap, a bug): as :meth:`failed`, but a record its run already
        failed keeps that run's own reason. Where there is no record, one is written only if
        ``create`` (a new upload's, which the web tier waits on)."""
        return self._fail(photo_id, reason, "late", create=create)

    def failed_stuck(self, photo_id: int, reason: str, cutoff: float) -> bool:
        """Failed with ``reason`` if still processing and its latest attempt began at or before
        ``cutoff``; True if it was. Drops the index entry of a record no longer processing."""
        return self._fail(photo_id, reason, "stuck", cutoff)

    def _fail(self, photo_id: int, reason: str, mode: str, cutoff: float = 0.0,
              create: bool = False) -> bool:
        return bool(FAIL(self.r, [self.key(photo_id), self.index],
                         [photo_id, one_line(reason), f"{time.time():.3f}", mode, repr(cutoff),
                          "1" if create else "0"]))

    def processing_since(self, cutoff: float, limit: int) -> list[tuple[int, float]]:
        """Up to ``limit`` (photo id, when its latest attempt started) listed as processing since
        ``cutoff`` or earlier, oldest first."""
        rows = cast("list[tuple[str, float]]", self.r.zrangebyscore(
            self.index, "-inf", cutoff, start=0, num=limit, withscores=True))
        return [(int(member), float(score)) for member, score in rows]

    def followons_sent(self, photo_id: int) -> None:
        self._set(photo_id, followons="1")

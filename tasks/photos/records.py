"""The photo record in the data Redis: ``{prefix}:photo:{id}``, a hash the web tier can read.

Fields: status (processing / ready / failed), owner_id, original_key, version (bumped by each
reprocess, and put in variant URLs so a CDN never serves the old bytes), variants (JSON:
name -> key, width, height, bytes, url), reason (one line, when failed), timings (JSON: phase ->
ms), followons ("1" once fan-out, cross-posts and webhooks were sent), updated_at.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, cast

import redis

from config.settings import Settings

PROCESSING, READY, FAILED = "processing", "ready", "failed"


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
    updated_at: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


class PhotoRecords:
    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.r = client
        self.s = settings

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
            updated_at=float(raw.get("updated_at", 0)),
        )

    def _set(self, photo_id: int, **fields: Any) -> None:
        fields["updated_at"] = f"{time.time():.3f}"
        self.r.hset(self.key(photo_id), mapping={k: str(v) for k, v in fields.items()})

    def start(self, photo_id: int, owner_id: int, original_key: str, version: int) -> None:
        self._set(photo_id, status=PROCESSING, owner_id=owner_id, original_key=original_key,
                  version=version, reason="")

    def ready(self, photo_id: int, variants: dict[str, dict[str, Any]],
              timings: dict[str, float]) -> None:
        self._set(photo_id, status=READY, reason="",
                  variants=json.dumps(variants, separators=(",", ":")),
                  timings=json.dumps({k: round(v, 1) for k, v in timings.items()}))

    def failed(self, photo_id: int, reason: str) -> None:
        self._set(photo_id, status=FAILED, reason=" ".join(reason.split()))

    def followons_sent(self, photo_id: int) -> None:
        self._set(photo_id, followons="1")

"""What the farm knows of each cross-post, per (photo, network), in the data Redis.

- ``farm:social:post:{photo_id}:{network}``: hash, the post record. ``status`` ``posted`` (with
  ``post_id``, "" when X refused a repeat as a duplicate and so never said the id; ``account``;
  ``user_id``; ``at``; ``how``: ``posted``, ``found`` by reconciliation, or ``duplicate``) is
  what makes every later run a no-op, and is kept (it links the photo to its post, as the photo
  record is kept). ``skipped`` (with ``reason``: no linked account) expires after
  FARM_MARKER_TTL and does not stop a later run from posting (say, a replay after the user
  linked the account again).
- ``farm:social:pending:{photo_id}:{network}``: the attempt marker, set before a post leaves
  (``at``, ``account``): a run that finds it and no record knows an earlier attempt's outcome
  is unknown. Expires after FARM_MARKER_TTL: longer than any message that can still run.
- ``farm:social:lock:{photo_id}:{network}``: held by the run posting, so two deliveries of one
  message running at once (an operator's replay beside a redelivery) cannot both post.

A post record is written in one round trip (MULTI: the record, the pending marker dropped, the
counter), right after the network's answer.
"""

from __future__ import annotations

import json
import time
from typing import Any, cast

import redis

from config.settings import Settings
from tasks.core.validation import NETWORKS

POSTED, SKIPPED = "posted", "skipped"


class PostRecords:
    def __init__(self, r: redis.Redis, s: Settings) -> None:
        self.r, self.s = r, s

    def record_key(self, photo_id: int, network: str) -> str:
        return self.s.key("social", "post", photo_id, network)

    def pending_key(self, photo_id: int, network: str) -> str:
        return self.s.key("social", "pending", photo_id, network)

    def lock_key(self, photo_id: int, network: str) -> str:
        return self.s.key("social", "lock", photo_id, network)

    def tombstone_key(self, photo_id: int) -> str:
        """A deleted photo's tombstone (README, the feeds data contract: ``farm:deleted:{id}``)."""
        return self.s.key("deleted", photo_id)

    def state(self, photo_id: int, network: str
              ) -> tuple[dict[str, str] | None, dict[str, Any] | None, bool]:
        """The post record, the pending marker, and whether the photo was deleted: one round
        trip."""
        pipe = self.r.pipeline(transaction=False)
        pipe.hgetall(self.record_key(photo_id, network))
        pipe.get(self.pending_key(photo_id, network))
        pipe.exists(self.tombstone_key(photo_id))
        record, pending, deleted = pipe.execute()
        return (cast("dict[str, str]", record) or None,
                json.loads(pending) if pending else None, bool(deleted))

    def get(self, photo_id: int, network: str) -> dict[str, str] | None:
        return cast("dict[str, str]", self.r.hgetall(self.record_key(photo_id, network))) or None

    def pending(self, photo_id: int, network: str) -> dict[str, Any] | None:
        raw = cast("str | None", self.r.get(self.pending_key(photo_id, network)))
        return json.loads(raw) if raw else None

    def of_photo(self, photo_id: int) -> dict[str, dict[str, Any]]:
        """network -> its record (and ``pending``, the marker, if one is set), for every network
        with either."""
        pipe = self.r.pipeline(transaction=False)
        for network in NETWORKS:
            pipe.hgetall(self.record_key(photo_id, network))
            pipe.get(self.pending_key(photo_id, network))
        answers = pipe.execute()
        out: dict[str, dict[str, Any]] = {}
        for i, network in enumerate(NETWORKS):
            record: dict[str, Any] = dict(answers[2 * i])
            if answers[2 * i + 1]:
                record["pending"] = json.loads(answers[2 * i + 1])
            if record:
                out[network] = record
        return out

    def mark_pending(self, photo_id: int, network: str, account: str) -> None:
        """Set before a post leaves; an earlier attempt's marker (its time: since when the
        outcome is unknown) is kept, its expiry pushed back."""
        key = self.pending_key(photo_id, network)
        pipe = self.r.pipeline(transaction=False)
        pipe.set(key, json.dumps({"at": round(time.time(), 3), "account": account}),
                 ex=self.s.marker_ttl, nx=True)
        pipe.expire(key, self.s.marker_ttl)
        pipe.execute()

    def clear_pending(self, photo_id: int, network: str) -> None:
        self.r.delete(self.pending_key(photo_id, network))

    def record_posted(self, photo_id: int, network: str, *, post_id: str, account: str,
                      user_id: int, how: str) -> None:
        """The post record, the pending marker dropped and the counter: one round trip."""
        key = self.record_key(photo_id, network)
        pipe = self.r.pipeline(transaction=True)
        pipe.delete(key)  # a skip recorded earlier leaves no reason behind
        pipe.hset(key, mapping={"status": POSTED, "post_id": post_id, "account": account,
                                "user_id": str(user_id), "at": f"{time.time():.3f}",
                                "how": how})
        pipe.delete(self.pending_key(photo_id, network))
        pipe.hincrby(self.s.key("metrics", "counters"), f"social.{network}.{how}", 1)
        pipe.execute()

    def record_skipped(self, photo_id: int, network: str, *, user_id: int, reason: str) -> None:
        key = self.record_key(photo_id, network)
        pipe = self.r.pipeline(transaction=True)
        pipe.delete(key)
        pipe.hset(key, mapping={"status": SKIPPED, "reason": reason, "user_id": str(user_id),
                                "at": f"{time.time():.3f}"})
        pipe.expire(key, self.s.marker_ttl)
        pipe.hincrby(self.s.key("metrics", "counters"), f"social.{network}.skipped", 1)
        pipe.execute()

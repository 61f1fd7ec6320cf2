"""The photo-sweep job: records no run will end, failed with the time they were left at.

Every run ends its record ready or failed, the dead-letter hook included (pipeline.py); what is
left is a record whose run vanished: the hook could not reach the data Redis, a retry message was
lost, or a worker died in a way nothing redelivered. The index of records in processing
(records.py) is scored by the start of each record's latest attempt, so the sweep reads only the
old entries of one sorted set.

Failed, not re-queued: the record lacks what the message carried (caption, share_to), so a
re-sent photos.process would post without them; and a run that was only slow, not lost, still
ends its record ready later (ready overwrites failed; only failed never overwrites ready).
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

import redis

from config.settings import Settings
from tasks.core.jobs import Progress, Result, no_progress
from tasks.photos.records import PhotoRecords

log = logging.getLogger("farm.photos")

BATCH = 500  # index entries read per round trip
GRACE = 60.0  # seconds for clocks apart between hosts, and a worker slow to start a message


def stuck_after(s: Settings) -> float:
    """Seconds an attempt may leave its record in processing with nothing to end or restart it.

    The clock restarts at every attempt (records.start), so the bound is one attempt's worst
    case, not the sum over retry_max retries and max_deliveries redeliveries: the attempt runs
    up to the hard time limit, its retry waits up to retry_max_delay, and the message (the retry
    or the first, its worker dead) comes back a visibility timeout after it was taken, found
    within restore_interval. The redelivery cap and exhausted retries fail the record through
    the dead letter, not here. With the defaults: 300 + 900 + 3600 + 30 + 60 s, 81.5 minutes.
    """
    return (s.task_time_limit + s.retry_max_delay + s.visibility_timeout + s.restore_interval
            + GRACE)


def fail_stuck(client: redis.Redis, s: Settings, progress: Progress = no_progress,
               now: float | None = None) -> Result:
    """Fail every record whose latest attempt began more than :func:`stuck_after` ago and is
    still processing; drop index entries of records that ended (or were deleted) meanwhile."""
    records = PhotoRecords(client, s)
    window = stuck_after(s)
    cutoff = (time.time() if now is None else now) - window
    out = {"failed": 0, "ended": 0, "window_s": round(window)}
    done = 0
    # Each listed entry is failed, dropped (no longer processing) or moved past the cutoff by a
    # new attempt, so every round reads new entries; the seen set guards against a loop anyway.
    seen: set[int] = set()
    while batch := [row for row in records.processing_since(cutoff, BATCH) if row[0] not in seen]:
        for photo_id, since in batch:
            seen.add(photo_id)
            at = datetime.fromtimestamp(since, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
            reason = (f"stuck in processing since {at}: no run ended it within {window:.0f}s "
                      "(its worker or its message was lost)")
            if records.failed_stuck(photo_id, reason, cutoff):
                out["failed"] += 1
                log.warning("photo-sweep: photo %d failed: %s", photo_id, reason)
            else:
                out["ended"] += 1
        done += len(batch)
        progress("records", done, None)
    progress("records", done, done)
    return out

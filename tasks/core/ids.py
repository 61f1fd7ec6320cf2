"""64-bit ids that sort by time, as Instagram made them: 41 bits of milliseconds since an epoch,
13 bits of logical shard, 10 bits of a per-shard sequence. Newer ids are larger, so a feed sorted
by id is sorted by time, and 1,024 ids a millisecond per shard is plenty.

The web tier makes ids with :class:`IdGenerator` (one per process and logical shard); the farm
only reads them.
"""

from __future__ import annotations

import threading
import time

EPOCH_MS = 1_293_840_000_000  # 2011-01-01T00:00:00Z
SHARD_BITS, SEQUENCE_BITS = 13, 10
MAX_SHARD = (1 << SHARD_BITS) - 1
MAX_SEQUENCE = (1 << SEQUENCE_BITS) - 1


def make_id(ms: int, shard: int, sequence: int) -> int:
    return ((ms - EPOCH_MS) << (SHARD_BITS + SEQUENCE_BITS)) | (shard << SEQUENCE_BITS) | sequence


def id_time_ms(photo_id: int) -> int:
    """The creation time of an id, in Unix milliseconds."""
    return (photo_id >> (SHARD_BITS + SEQUENCE_BITS)) + EPOCH_MS


def id_shard(photo_id: int) -> int:
    return (photo_id >> SEQUENCE_BITS) & MAX_SHARD


class IdGenerator:
    """Thread-safe, monotonic ids for one logical shard; waits out a full millisecond or a clock
    that stepped back rather than ever repeating an id."""

    def __init__(self, shard: int) -> None:
        if not 0 <= shard <= MAX_SHARD:
            raise ValueError(f"shard must be between 0 and {MAX_SHARD}, got {shard}")
        self.shard = shard
        self._lock = threading.Lock()
        self._last_ms = 0
        self._sequence = 0

    def next_id(self) -> int:
        with self._lock:
            ms = int(time.time() * 1000)
            if ms < self._last_ms:  # the clock stepped back: keep counting from where we were
                ms = self._last_ms
            if ms == self._last_ms:
                self._sequence = (self._sequence + 1) & MAX_SEQUENCE
                if self._sequence == 0:  # 1,024 ids this millisecond already: wait for the next
                    while ms <= self._last_ms:
                        time.sleep(0.0001)
                        ms = int(time.time() * 1000)
            else:
                self._sequence = 0
            self._last_ms = ms
            return make_id(ms, self.shard, self._sequence)

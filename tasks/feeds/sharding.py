"""Which feed shard holds a user's feed: a jump consistent hash of the user id.

``jump_hash`` is the definition, one user at a time; ``jump_hash_many`` computes the same shards
for a whole fan-out chunk at once with numpy (every step in uint64 and float64 as the scalar one
does it, so the two agree bit for bit: tests/feeds/test_sharding.py), because per follower in
Python the hash was most of a sharded chunk's own CPU (about 0.9 us a follower).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

_M64 = (1 << 64) - 1
_STEP = 2862933555777941757  # the jump hash's linear congruential multiplier

U64 = npt.NDArray[np.uint64]


def _mix(key: int) -> int:
    """splitmix64's finaliser: sequential user ids spread evenly before the jump hash."""
    key = (key + 0x9E3779B97F4A7C15) & _M64
    key = ((key ^ (key >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    key = ((key ^ (key >> 27)) * 0x94D049BB133111EB) & _M64
    return key ^ (key >> 31)


def jump_hash(key: int, buckets: int) -> int:
    """Lamping and Veach's jump consistent hash: adding an (n+1)th shard moves only the 1/(n+1)
    of users that now hash to it; everyone else stays where they were."""
    key, b, j = _mix(key), -1, 0
    while j < buckets:
        b = j
        key = (key * _STEP + 1) & _M64
        j = int((b + 1) * ((1 << 31) / ((key >> 33) + 1)))
    return b


def _mix_many(keys: U64) -> U64:
    # uint64 arithmetic wraps modulo 2**64, as the & _M64 above does
    k = keys + np.uint64(0x9E3779B97F4A7C15)
    k = (k ^ (k >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    k = (k ^ (k >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return k ^ (k >> np.uint64(31))


def jump_hash_many(keys: npt.ArrayLike, buckets: int) -> npt.NDArray[np.int64]:
    """``jump_hash(k, buckets)`` for every k in ``keys`` (non-negative ints below 2**64)."""
    k = _mix_many(np.asarray(keys, dtype=np.uint64))
    b = np.full(k.shape, -1, dtype=np.int64)
    j = np.zeros(k.shape, dtype=np.int64)
    todo = np.arange(k.size)  # the keys whose jump has not yet passed the last bucket
    step, one, shift = np.uint64(_STEP), np.uint64(1), np.uint64(33)
    while todo.size:
        b[todo] = j[todo]
        k[todo] = k[todo] * step + one
        # the scalar version's float division and product, in the same float64 steps
        q = float(1 << 31) / ((k[todo] >> shift) + one).astype(np.float64)
        j[todo] = ((b[todo] + 1).astype(np.float64) * q).astype(np.int64)
        todo = todo[j[todo] < buckets]
    return b

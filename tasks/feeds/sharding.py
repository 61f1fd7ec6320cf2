"""Which feed shard holds a user's feed: a jump consistent hash of the user id."""

from __future__ import annotations

_M64 = (1 << 64) - 1


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
        key = (key * 2862933555777941757 + 1) & _M64
        j = int((b + 1) * ((1 << 31) / ((key >> 33) + 1)))
    return b

"""Cursor walks over big keys and the keyspace, a short Redis call per step (never KEYS)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import cast

import redis

SCAN_COUNT = 1000  # items per SCAN/HSCAN step: one progress tick, one short Redis call


def hscan(client: redis.Redis, key: str) -> Iterator[dict[str, str]]:
    """The hash's fields in batches (a field may come twice while the hash grows)."""
    cursor = 0
    while True:
        cursor, batch = client.hscan(key, cursor, count=SCAN_COUNT)
        yield cast("dict[str, str]", batch)
        if cursor == 0:
            return


def scan(client: redis.Redis, match: str) -> Iterator[list[str]]:
    """The keys matching ``match``, in batches."""
    cursor = 0
    while True:
        cursor, batch = client.scan(cursor, match=match, count=SCAN_COUNT)
        yield cast("list[str]", batch)
        if cursor == 0:
            return


def glob_escape(text: str) -> str:
    """``text`` matched literally in a SCAN pattern (a key prefix may hold glob characters)."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)

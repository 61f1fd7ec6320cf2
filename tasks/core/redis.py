"""The data Redis client: one connection pool per process and URL, made after fork. Behind
Sentinel (FARM_REDIS_MASTER) it is a client of the current master that follows a failover
(config/sentinel.py); feed shards are always plain URLs.

Every client made here decodes replies (``decode_responses=True``). redis-py 8's ``Redis`` is not
generic over that: its commands are typed to return ``bytes | str`` whatever the client, so code
reading a reply as text narrows it with ``cast("str", ...)``, ``cast("list[str]", ...)`` and the
like at the call; ``cast`` costs nothing at run time.
"""

from __future__ import annotations

import redis

from config.sentinel import redis_from_url
from config.settings import get_settings
from tasks.core.process_local import ProcessLocal

_clients: ProcessLocal[str, redis.Redis] = ProcessLocal("data redis clients")


def data_redis(url: str | None = None) -> redis.Redis:
    """A decoded-string client for the farm's own bookkeeping (dead letters, markers, metrics)."""
    url = url or get_settings().redis_url
    return _clients.get(url, lambda: redis_client(url))


def redis_client(url: str) -> redis.Redis:
    """A new decoded-string client (feed shards, and data_redis' own)."""
    return redis_from_url(url, decode_responses=True, health_check_interval=30)

"""The data Redis client: one pool per process, made after fork."""

from __future__ import annotations

import os

import redis

from config.settings import get_settings

_clients: dict[tuple[int, str], redis.Redis] = {}


def data_redis(url: str | None = None) -> redis.Redis:
    """A decoded-string client for the farm's own bookkeeping (dead letters, markers, metrics).

    Keyed by pid so a prefork child never reuses its parent's sockets.
    """
    url = url or get_settings().redis_url
    key = (os.getpid(), url)
    client = _clients.get(key)
    if client is None:
        client = redis.Redis.from_url(url, decode_responses=True, health_check_interval=30)
        _clients[key] = client
    return client

"""Redis Sentinel: the broker and the data Redis found by master name, and followed through a
failover (FARM_SENTINELS, FARM_BROKER_MASTER, FARM_REDIS_MASTER; config/settings.py).

Every Redis client the farm makes from the broker or data URL comes from :func:`redis_from_url`:
``redis.Redis.from_url`` itself when no master name is set for that URL, else redis-py's
Sentinel-managed client, which asks the sentinels for the master before each new connection,
drops its idle connections when the answer changes, and drops one that finds its server turned
replica (READONLY). Celery's broker and result backend get the same sentinels in kombu's and
Celery's own form (:func:`celery_url`, :func:`transport_options`): a ``sentinel://`` URL per
sentinel joined by ``;``, the master name and the sentinels' password as transport options.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import redis
from redis.connection import parse_url
from redis.sentinel import Sentinel

from config.settings import Settings, get_settings, sentinel_address

# Seconds per sentinel asked: the lookup asks them in turn, and one that is unreachable (a host
# lost, not refusing) must not hold a reconnect for the OS's connect timeout.
SENTINEL_TIMEOUT = 1.0


def master_name(s: Settings, url: str) -> str | None:
    """The master name the sentinels know ``url``'s server by, or None for a plain URL."""
    if not s.sentinels:
        return None
    if url == s.broker_url and s.broker_master:
        return s.broker_master
    if url == s.redis_url and s.redis_master:
        return s.redis_master
    return None


def addresses(s: Settings) -> list[tuple[str, int]]:
    return [addr for addr in map(sentinel_address, s.sentinels) if addr is not None]


def sentinel_kwargs(s: Settings) -> dict[str, Any]:
    """How to reach the sentinels themselves (never the master's password: theirs, if any)."""
    kwargs: dict[str, Any] = {"socket_timeout": SENTINEL_TIMEOUT,
                              "socket_connect_timeout": SENTINEL_TIMEOUT}
    if s.sentinel_password:
        kwargs["password"] = s.sentinel_password
    return kwargs


def redis_from_url(url: str, s: Settings | None = None, **kwargs: Any) -> redis.Redis:
    """``redis.Redis.from_url(url, **kwargs)``, or, when the settings put ``url``'s server
    behind Sentinel, a client of its current master that follows a failover. The URL gives the
    password and database; ``kwargs`` (timeouts, decode_responses) apply to the master's
    connections."""
    s = s or get_settings()
    master = master_name(s, url)
    if master is None:
        return redis.Redis.from_url(url, **kwargs)
    # redis-py leaves its Sentinel API and parse_url untyped
    sentinel = Sentinel(addresses(s), sentinel_kwargs=sentinel_kwargs(s))  # type: ignore[no-untyped-call]
    params = {**parse_url(url), **kwargs}  # type: ignore[no-untyped-call]
    client: redis.Redis = sentinel.master_for(master, **params)  # type: ignore[no-untyped-call]
    return client


def celery_url(s: Settings, url: str) -> str:
    """``url`` as kombu and Celery take a server behind Sentinel: one ``sentinel://`` URL per
    sentinel, joined by ``;``, each with the master's credentials and database (kombu reads
    them from the first); ``url`` itself when it is a plain one."""
    if master_name(s, url) is None:
        return url
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    auth = f"{userinfo}@" if userinfo else ""
    db = parts.path.strip("/") or "0"
    hosts = [f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in addresses(s)]
    return ";".join(f"sentinel://{auth}{host}/{db}" for host in hosts)


def transport_options(s: Settings, url: str) -> dict[str, Any]:
    """kombu's (broker) and Celery's (result backend) options for ``url``'s master: its name
    and how to reach the sentinels; empty for a plain URL."""
    master = master_name(s, url)
    if master is None:
        return {}
    return {"master_name": master, "sentinel_kwargs": sentinel_kwargs(s)}

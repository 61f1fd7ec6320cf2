"""The reliable-fetch channel reuses one client object per connection pool (a new redis.Redis per
ack and per publish cost about 150 us each, `farm bench drain --profile`), and a pool kombu
replaces (after a fork, after a connection error) gets a client of its own."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from kombu import Connection

from workers.embedded_redis import EmbeddedRedis

pytestmark = pytest.mark.integration

DB = 4  # the session server's database for these tests alone
TRANSPORT = "config.reliable_redis:Transport"


@pytest.fixture
def url(redis_server: EmbeddedRedis) -> Iterator[str]:
    address = redis_server.url(DB)
    redis.Redis.from_url(address).flushdb()
    yield address
    redis.Redis.from_url(address).flushdb()


def test_one_client_per_pool_and_a_new_one_with_a_new_pool(url: str) -> None:
    with Connection(url, transport=TRANSPORT) as conn:
        channel = conn.channel()
        with channel.conn_or_acquire() as first:
            first.set("k", "1")
        with channel.conn_or_acquire() as again:
            assert again is first
            assert again.get("k") == b"1"
        # A client the caller passes is used as given.
        other = redis.Redis.from_url(url)
        with channel.conn_or_acquire(other) as given:
            assert given is other
        # What kombu does after a fork or a lost connection: the pool is dropped and remade.
        channel._disconnect_pools()
        with channel.conn_or_acquire() as fresh:
            assert fresh is not first
            assert fresh.connection_pool is channel.pool
            assert fresh.get("k") == b"1"
        other.close()

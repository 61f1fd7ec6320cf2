"""Redis Sentinel settings: checked at load, and turned into what each client library takes;
with no sentinel configured, nothing changes."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
from redis.sentinel import SentinelConnectionPool

from config.sentinel import celery_url, master_name, redis_from_url, transport_options
from config.settings import Settings, SettingsError, load_settings

SENTINEL = {"FARM_SENTINELS": "10.0.0.1:26379, sentinel-2:26380,[::1]:26381",
            "FARM_BROKER_MASTER": "farm-broker", "FARM_REDIS_MASTER": "farm-data",
            "FARM_BROKER_URL": "redis://:p%40ss@/0", "FARM_REDIS_URL": "redis://u:pw@/1",
            "FARM_SENTINEL_PASSWORD": "sentinel-secret"}


def load(**env: str) -> Settings:
    return load_settings(env, dotenv=Path("/nonexistent/.env"))


@pytest.mark.parametrize(("env", "message"), [
    ({"FARM_SENTINELS": "a:1,b"}, "FARM_SENTINELS: must be comma-separated host:port"),
    ({"FARM_SENTINELS": "a:0"}, "FARM_SENTINELS: must be comma-separated host:port"),
    ({"FARM_SENTINELS": "a b:26379"}, "FARM_SENTINELS: must be comma-separated host:port"),
    ({"FARM_SENTINELS": "a:1,a:1", "FARM_REDIS_MASTER": "m"}, "FARM_SENTINELS: lists a sentinel"),
    ({"FARM_SENTINELS": "a:1"}, "FARM_SENTINELS: name the master(s) they watch"),
    ({"FARM_BROKER_MASTER": "m"}, "FARM_BROKER_MASTER: needs FARM_SENTINELS"),
    ({"FARM_SENTINELS": "a:1", "FARM_REDIS_MASTER": "m m", "FARM_REDIS_URL": "redis:///1"},
     "FARM_REDIS_MASTER: must be 1-64 letters"),
    ({"FARM_SENTINELS": "a:1", "FARM_BROKER_MASTER": "m"},
     "FARM_BROKER_URL: with FARM_BROKER_MASTER set the sentinels name the server: give no host"),
    ({"FARM_SENTINELS": "a:1", "FARM_REDIS_MASTER": "m", "FARM_REDIS_URL": "redis://:pw@:6379/1"},
     "FARM_REDIS_URL: with FARM_REDIS_MASTER set the sentinels name the server"),
    ({"FARM_SENTINELS": "a:1", "FARM_BROKER_MASTER": "m", "FARM_BROKER_URL": "rediss://:pw@/0"},
     "FARM_BROKER_URL: with FARM_BROKER_MASTER set it must be a redis:// URL (TLS"),
    ({"FARM_SENTINELS": "a:1", "FARM_BROKER_MASTER": "m",
      "FARM_BROKER_URL": "amqp://u:pw@rabbit:5672/farm"}, "FARM_BROKER_MASTER: the broker is "
                                                        "RabbitMQ"),
    ({"FARM_SENTINELS": "a:1", "FARM_REDIS_MASTER": "m", "FARM_REDIS_URL": "redis:///1",
      "FARM_BROKER_URL": "redis:///1"}, "FARM_REDIS_MASTER: FARM_BROKER_URL and FARM_REDIS_URL"),
])
def test_wrong_sentinel_settings_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as err:
        load(**env)
    assert str(err.value).startswith(message)
    assert "pw" not in str(err.value)


def test_sentinel_settings_load_and_the_password_stays_secret() -> None:
    s = load(**SENTINEL)
    assert s.sentinels == ("10.0.0.1:26379", "sentinel-2:26380", "[::1]:26381")
    assert (s.broker_master, s.redis_master) == ("farm-broker", "farm-data")
    assert "sentinel-secret" not in repr(s)
    assert load(FARM_SENTINELS="a:1", FARM_REDIS_MASTER="m", FARM_REDIS_URL="redis:///2",
                FARM_SENTINEL_PASSWORD_FILE="/dev/null").sentinel_password == ""


def test_each_url_finds_its_own_master() -> None:
    s = load(**SENTINEL)
    assert master_name(s, s.broker_url) == "farm-broker"
    assert master_name(s, s.redis_url) == "farm-data"
    assert master_name(s, s.result_backend) == "farm-data"  # results follow the data Redis
    assert master_name(s, "redis://shard:6379/0") is None  # feed shards stay plain
    plain = load(FARM_RESULT_URL="redis://results:6379/2", **SENTINEL)
    assert master_name(plain, plain.result_backend) is None


def test_kombu_and_celery_get_sentinel_urls_and_options() -> None:
    s = load(**SENTINEL)
    assert celery_url(s, s.broker_url) == (
        "sentinel://:p%40ss@10.0.0.1:26379/0;sentinel://:p%40ss@sentinel-2:26380/0;"
        "sentinel://:p%40ss@[::1]:26381/0")
    assert celery_url(s, s.redis_url).startswith("sentinel://u:pw@10.0.0.1:26379/1;")
    options = transport_options(s, s.broker_url)
    assert options["master_name"] == "farm-broker"
    assert options["sentinel_kwargs"]["password"] == "sentinel-secret"
    assert options["sentinel_kwargs"]["socket_timeout"] > 0


def test_the_celery_config_uses_them_and_reliable_fetch_serves_sentinel_urls() -> None:
    from kombu.transport import resolve_transport

    from config.celery_app import celery_config, use_reliable_fetch
    from config.reliable_redis import ReliableChannel, SentinelTransport

    s = load(**SENTINEL)
    conf = celery_config(s)
    assert conf["broker_url"].startswith("sentinel://")
    assert conf["result_backend"].startswith("sentinel://")
    assert conf["broker_transport_options"]["master_name"] == "farm-broker"
    assert conf["broker_transport_options"]["inflight_heartbeat"] == s.inflight_heartbeat
    assert conf["result_backend_transport_options"]["master_name"] == "farm-data"
    channel = SentinelTransport.Channel
    assert issubclass(channel, ReliableChannel)
    assert {"master_name", "sentinel_kwargs", "inflight_heartbeat"} <= set(
        channel.from_transport_options)
    try:
        use_reliable_fetch(True)
        assert resolve_transport("sentinel") is SentinelTransport
        use_reliable_fetch(False)
        assert resolve_transport("sentinel").__module__ == "kombu.transport.redis"
    finally:
        use_reliable_fetch(True)


def test_without_sentinels_nothing_changes() -> None:
    from config.celery_app import celery_config

    s = load(FARM_BROKER_URL="redis://:pw@10.1.1.1:6379/0")
    conf = celery_config(s)
    assert conf["broker_url"] == s.broker_url
    assert conf["result_backend"] == s.redis_url
    assert "master_name" not in conf["broker_transport_options"]
    assert "master_name" not in conf["result_backend_transport_options"]
    client = redis_from_url(s.broker_url, s, socket_timeout=3)
    assert type(client.connection_pool) is redis.ConnectionPool
    assert client.connection_pool.connection_kwargs["host"] == "10.1.1.1"


def test_a_url_behind_sentinel_gets_a_client_that_asks_the_sentinels() -> None:
    s = load(**SENTINEL)
    client = redis_from_url(s.redis_url, s, decode_responses=True)
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    assert pool.service_name == "farm-data"
    kwargs = pool.connection_kwargs
    assert (kwargs["username"], kwargs["password"], kwargs["db"]) == ("u", "pw", 1)
    assert kwargs["decode_responses"] is True
    sentinels = pool.sentinel_manager.sentinels
    assert [c.connection_pool.connection_kwargs["port"] for c in sentinels] == [26379, 26380,
                                                                                26381]
    assert sentinels[0].connection_pool.connection_kwargs["password"] == "sentinel-secret"

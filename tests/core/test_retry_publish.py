"""A retry whose publish the broker refuses is never dropped: the task keeps trying to publish it
for a while, and if the broker still refuses, its message stays the broker's and comes back.
The broker refuses with an ACL that denies the workers' user LPUSH (every publish), as a broker
loading its AOF or failing over refuses writes for a few seconds."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis

from config.celery_app import app
from tests.support.workers import FAST_REDELIVERY, WorkerFactory, wait_for
from workers.embedded_redis import EmbeddedRedis

# Writes refused by the Redis broker (a replica, a failover): Redis's own behaviour.
pytestmark = [pytest.mark.integration, pytest.mark.redis_broker]

USER, PASSWORD = "farmworker", "worker-secret"


@pytest.fixture
def acl(redis_server: EmbeddedRedis) -> Iterator[redis.Redis]:
    """An ACL user for the workers' broker connections; the test takes LPUSH away from it."""
    admin = redis.Redis.from_url(redis_server.url(0))
    admin.acl_setuser(USER, enabled=True, passwords=[f"+{PASSWORD}"], keys=["~*"],
                      channels=["*"], commands=["+@all"], reset=True)
    admin.acl_log_reset()
    yield admin
    admin.acl_deluser(USER)
    admin.close()


def worker_env(redis_server: EmbeddedRedis) -> dict[str, str]:
    url = urlsplit(redis_server.url(0))
    netloc = f"{USER}:{PASSWORD}@{url.hostname}:{url.port}"
    return {**FAST_REDELIVERY, "FARM_BROKER_URL": urlunsplit(url._replace(netloc=netloc))}


def denied_lpush(admin: redis.Redis) -> bool:
    return any(e.get("object") == "lpush" or b"lpush" in str(e).encode()
               for e in admin.acl_log())


def runs(data: redis.Redis, marker: str) -> int:
    return int(data.llen(f"farm:diag:{marker}:runs"))


def test_a_retry_refused_for_a_few_seconds_is_published_once_writes_come_back(
        data: redis.Redis, acl: redis.Redis, redis_server: EmbeddedRedis,
        workers: WorkerFactory) -> None:
    workers("batch", env=worker_env(redis_server))
    acl.acl_setuser(USER, enabled=True, commands=["-lpush"])  # no publish from now on
    app.send_task("diag.flaky", args=["blip", 1], queue="maintenance")  # the test may publish
    wait_for(lambda: runs(data, "blip") == 1, what="the first, failing run")
    wait_for(lambda: denied_lpush(acl), what="the retry's publish to be refused")
    acl.acl_setuser(USER, enabled=True, commands=["+lpush"])
    wait_for(lambda: data.get("farm:diag:blip:done"), timeout=60, what="the retried run")
    assert runs(data, "blip") == 2
    assert not data.zcard("farm:deadletter:index")


def test_a_retry_refused_past_the_tasks_patience_leaves_the_message_with_the_broker(
        data: redis.Redis, acl: redis.Redis, redis_server: EmbeddedRedis,
        workers: WorkerFactory) -> None:
    # Patience is bounded by the soft time limit (3 s here): the task gives up publishing and
    # hands its message back; the broker still refuses LPUSH, so it stays unacked until the
    # visibility sweep (6 s) puts it back, after writes return.
    workers("batch", env=worker_env(redis_server))
    acl.acl_setuser(USER, enabled=True, commands=["-lpush"])
    app.send_task("diag.flaky", args=["outage", 1], queue="maintenance")
    wait_for(lambda: runs(data, "outage") == 1, what="the first, failing run")
    wait_for(lambda: data.hget("farm:metrics:tasks", "diag.flaky:requeued"), timeout=30,
             what="the task to hand its message back")
    acl.acl_setuser(USER, enabled=True, commands=["+lpush"])
    wait_for(lambda: data.get("farm:diag:outage:done"), timeout=90, what="the message to come "
             "back and run again")
    assert runs(data, "outage") == 2
    assert not data.zcard("farm:deadletter:index")


def test_follow_ons_refused_for_a_few_seconds_go_out_once_writes_come_back(
        data: redis.Redis, acl: redis.Redis, redis_server: EmbeddedRedis,
        workers: WorkerFactory) -> None:
    from config.settings import get_settings
    from tasks import enqueue
    from tasks.blobs import open_store
    from tests.support.corpus import oriented_jpeg

    open_store(get_settings()).put("originals/7.jpg", oriented_jpeg(1), content_type="image/jpeg")
    workers("cpu", env=worker_env(redis_server))
    workers("feed", env=worker_env(redis_server))
    acl.acl_setuser(USER, enabled=True, commands=["-lpush"])
    enqueue.photo_uploaded(7, 70, "originals/7.jpg")  # the web tier may still publish
    wait_for(lambda: denied_lpush(acl), what="the follow-ons' publish to be refused")
    acl.acl_setuser(USER, enabled=True, commands=["+lpush"])
    wait_for(lambda: data.hget("farm:metrics:tasks", "feeds.fanout:ok"), timeout=60,
             what="the fan-out the photo sent")
    assert data.hget("farm:metrics:tasks", "photos.process:ok") == "1"
    assert data.lrange("farm:posts:70", 0, -1) == ["7"]
    assert not data.zcard("farm:deadletter:index")

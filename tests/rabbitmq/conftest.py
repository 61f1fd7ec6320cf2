"""A RabbitMQ broker for the tests: the server on 127.0.0.1:5672 when one answers, in a vhost of
the session's own (created with rabbitmqctl, deleted at the end). Skipped, with the reason, where
there is no rabbitmqctl, no server, or no right to add a vhost. The data Redis stays the session's
embedded server."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from kombu import Connection

from config.settings import get_settings
from tests.support import rabbitmq
from tests.support.settings import settings_env

if TYPE_CHECKING:
    from config.celery_app import FarmCelery

# Every test's queues share the vhost, so they share the delivery limit (a queue declared again
# with other arguments is refused): 2 starts, RabbitMQ's x-delivery-limit 6 (a backstop).
MAX_DELIVERIES = "2"


@pytest.fixture(scope="session")
def amqp_url() -> Iterator[str]:
    problem = rabbitmq.unavailable()
    if problem:
        pytest.skip(problem)
    try:
        vhost = rabbitmq.Vhost.create("photofarm-test")
    except RuntimeError as exc:
        pytest.skip(str(exc))
    try:
        yield vhost.url
    finally:
        vhost.delete()


@pytest.fixture
def amqp_env(amqp_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """This process's settings on the RabbitMQ broker; the env to give workers the same."""
    env = {"FARM_BROKER_URL": amqp_url, "FARM_MAX_DELIVERIES": MAX_DELIVERIES}
    with settings_env(monkeypatch, env):
        yield env


@pytest.fixture
def amqp_app(amqp_env: dict[str, str]) -> Iterator[FarmCelery]:
    """A Celery app configured as config/celery_app.py configures one for an amqp:// broker
    (the module's ``app`` stays on Redis and is made current again afterwards).

    Imported here, not at the top: pytest loads this file before tests/conftest.py has pointed
    FARM_* at the session's servers, and config.celery_app builds its app when imported."""
    from config.celery_app import app, make_app

    test_app = make_app(get_settings())
    yield test_app
    test_app.close()
    app.set_current()


@pytest.fixture
def amqp(amqp_url: str) -> Iterator[Connection]:
    """A plain connection to the test vhost, to look at queues."""
    with Connection(amqp_url) as conn:
        yield conn

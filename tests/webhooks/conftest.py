"""What the webhook tests share: settings set through the environment (as workers get them),
allowing this machine's loopback only where a test asks for it; a real local receiver
(workers/demo_webhooks.py); and subscriptions pointing at it."""

from __future__ import annotations

import base64
import itertools
import json
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from config.settings import Settings, get_settings
from tasks.webhooks.subscriptions import Subscription, Subscriptions
from workers.demo_webhooks import WebhookReceiver

OWNER = 42
LOOPBACK = "127.0.0.0/8"
_photo_ids = itertools.count(8_000_000_000 + os.getpid() * 1000)

Configure = Callable[..., Settings]
Subscribe = Callable[..., tuple[Subscription, str]]


def new_photo_id() -> int:
    return next(_photo_ids)


def queued(broker: redis.Redis, queue: str) -> list[dict[str, Any]]:
    """Messages waiting in a queue (kombu's Redis layout: a list per queue), decoded."""
    out = []
    for raw in broker.lrange(queue, 0, -1):
        msg = json.loads(raw)
        body = json.loads(base64.b64decode(msg["body"]))
        out.append({"task": msg["headers"]["task"], "kwargs": body[1]})
    return out


@pytest.fixture
def configure(monkeypatch: pytest.MonkeyPatch) -> Iterator[Configure]:
    """configure(FARM_X="..."): set FARM_* variables for this test; returns the new settings.
    Starts with the receiver's loopback allowed and a short timeout; configure(
    FARM_WEBHOOK_ALLOW_NETWORKS="") takes the allowance away again."""
    def apply(**env: str) -> Settings:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        get_settings.cache_clear()
        return get_settings()

    apply(FARM_WEBHOOK_ALLOW_NETWORKS=LOOPBACK, FARM_WEBHOOK_TIMEOUT="1")
    yield apply
    monkeypatch.undo()
    get_settings.cache_clear()


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as hooks:
        yield hooks


@pytest.fixture
def subs(data: redis.Redis, configure: Configure) -> Subscriptions:
    return Subscriptions(data, get_settings())


@pytest.fixture
def subscribe(subs: Subscriptions, receiver: WebhookReceiver) -> Subscribe:
    """subscribe("user", 42, "/a"): a verified subscription to the receiver's path, whose
    secret the receiver then checks signatures with."""
    def make(obj: str = "user", object_id: str | int = OWNER, path: str = "/hook",
             **kwargs: object) -> tuple[Subscription, str]:
        sub, secret = Subscriptions(subs.r, get_settings()).add(
            obj, object_id, receiver.url(path), **kwargs)  # type: ignore[arg-type]
        receiver.secrets[path] = secret
        return sub, secret

    return make

"""What the social tests share: settings set through the environment (as workers get them), a
linked account of each kind, a photo's full variant in the session's blob store, the local
stand-in of both APIs, and the refusal guard's clock (tasks/social/refusals.py) moved by hand."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Iterator

import pytest
import redis

from config.settings import Settings, get_settings
from tasks.blobs import open_store, photo_key
from tasks.social import refusals
from tasks.social.accounts import Account, LinkedAccounts
from workers.demo_social import SocialStandIn

CONSUMER_KEY, CONSUMER_SECRET = "ck-0123456789abcdef", "cs-0123456789abcdefghijklmnopqrstuvwxyz"
X_TOKEN = "42-TokenTokenTokenTokenToken0123456789"
X_SECRET = "SecretSecretSecretSecret0123456789abcd"
PAGE_ID, PAGE_TOKEN = "1122334455667788", "EAAPageTokenPageTokenPageToken0123456789xyz"
OWNER = 42
_photo_ids = itertools.count(7_000_000_000 + os.getpid() * 1000)

Configure = Callable[..., Settings]


@pytest.fixture
def configure(monkeypatch: pytest.MonkeyPatch) -> Iterator[Configure]:
    """configure(FARM_X="..."): set FARM_* variables for this test, returns the new settings."""
    def apply(**env: str) -> Settings:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        get_settings.cache_clear()
        return get_settings()

    apply(FARM_TWITTER_CONSUMER_KEY=CONSUMER_KEY, FARM_TWITTER_CONSUMER_SECRET=CONSUMER_SECRET)
    yield apply
    monkeypatch.undo()
    get_settings.cache_clear()


@pytest.fixture
def accounts(data: redis.Redis, configure: Configure) -> LinkedAccounts:
    return LinkedAccounts(data, get_settings())


@pytest.fixture
def x_account(accounts: LinkedAccounts) -> Account:
    return accounts.link_twitter(OWNER, X_TOKEN, X_SECRET, handle="anna")


@pytest.fixture
def page(accounts: LinkedAccounts) -> Account:
    return accounts.link_facebook(OWNER, PAGE_ID, PAGE_TOKEN, page_name="Anna's photos")


def new_photo_id() -> int:
    return next(_photo_ids)


def jpeg_bytes(size: int = 40_000) -> bytes:
    """Bytes that start like a JPEG, with CR LF and boundary-like runs inside (multipart must
    carry them exactly); nothing decodes them on the way."""
    body = (b"\r\n--x\r\n\x00\xff" * (size // 10 + 1))[: max(0, size - 4)]
    return b"\xff\xd8\xff\xe0" + body


def store_full(photo_id: int, image: bytes | None = None) -> bytes:
    """The photo's full variant in the session's blob store, as the photo pipeline leaves it."""
    image = jpeg_bytes() if image is None else image
    open_store(get_settings()).put(photo_key(photo_id, "full"), image, content_type="image/jpeg")
    return image


@pytest.fixture
def standin(configure: Configure, data: redis.Redis) -> Iterator[SocialStandIn]:
    """Both APIs on a local port, the farm's settings pointing at them."""
    with SocialStandIn(CONSUMER_KEY, CONSUMER_SECRET) as api:
        configure(**api.env())
        yield api


class Clock:
    """The refusal guard's clock: real time at first, then moved on only by :meth:`advance`."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(refusals, "clock", fake)
    return fake


def confirm_after() -> float:
    """How long after an account's first refusal X refusing it again unlinks it."""
    return min(refusals.CONFIRM_AFTER, get_settings().retry_max_delay)

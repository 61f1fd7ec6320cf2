"""X refusing the farm's own credentials is not taken for every user revoking the app
(tasks/social/refusals.py): against the stand-in, with a wrong FARM_TWITTER_CONSUMER_SECRET (X
answers 401 for every user), posts for five users unlink nobody when they come together, and at
most APP_FAULT_ACCOUNTS - 1 when they come one by one; the rest are retried, saying what to
check. One revoked token among working ones still unlinks that account alone."""

from __future__ import annotations

import logging
import threading

import pytest
import redis

from config.settings import get_settings
from tasks.core.errors import PermanentError, RateLimited, TransientError
from tasks.core.metrics import counters
from tasks.social import refusals
from tasks.social.accounts import LinkedAccounts
from tasks.social.crosspost import crosspost
from tasks.social.posts import PostRecords
from tasks.social.refusals import APP_FAULT_ACCOUNTS, RefusalGuard
from tests.social.conftest import (
    CONSUMER_SECRET,
    Clock,
    Configure,
    confirm_after,
    new_photo_id,
    store_full,
)
from workers.demo_social import SocialStandIn

USERS = [101, 102, 103, 104, 105]
APP_MESSAGE = ("X refuses the app's credentials (check FARM_TWITTER_CONSUMER_KEY and "
               "FARM_TWITTER_CONSUMER_SECRET)")
CONFIRMING = "the account is unlinked if X refuses it again"


@pytest.fixture
def users(standin: SocialStandIn, data: redis.Redis) -> dict[int, int]:
    """Five users with an X account each (valid tokens at the stand-in); user -> their photo."""
    accounts = LinkedAccounts(data, get_settings())
    photos = {}
    for user in USERS:
        accounts.link_twitter(user, *standin.add_x_user(f"user{user}"), handle=f"user{user}")
        photos[user] = new_photo_id()
        store_full(photos[user])
    return photos


def attempt(user: int, photo: int) -> BaseException | None:
    """One run of the post, as the task would: what it raised, or None when it posted."""
    try:
        crosspost(photo, user, "twitter", "hello")
    except (TransientError, PermanentError) as exc:
        return exc
    return None


def still_linked(data: redis.Redis) -> list[int]:
    return [user for network, user in LinkedAccounts(data, get_settings()).linked()
            if network == "twitter"]


def app_alarms(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records
            if r.levelno == logging.ERROR and "outcome=app_refused" in r.getMessage()]


def test_a_wrong_consumer_secret_unlinks_nobody_when_users_post_together(
        standin: SocialStandIn, users: dict[int, int], configure: Configure, clock: Clock,
        data: redis.Redis, caplog: pytest.LogCaptureFixture) -> None:
    configure(FARM_TWITTER_CONSUMER_SECRET="rotated-by-mistake")
    first = {user: attempt(user, photo) for user, photo in users.items()}
    clock.advance(confirm_after())  # the retries come
    retried = {user: attempt(user, photo) for user, photo in users.items()}

    assert still_linked(data) == USERS
    for exc in [*first.values(), *retried.values()]:
        assert type(exc) is TransientError and not isinstance(exc, RateLimited)
    # The first two refusals could each be a revoked user: held for a second refusal. From the
    # third account on, it is the app: nothing is unlinked, the posts wait APP_FAULT_RETRY.
    early = USERS[:APP_FAULT_ACCOUNTS - 1]
    for user in early:
        exc = first[user]
        assert isinstance(exc, TransientError) and CONFIRMING in str(exc) and "401" in str(exc)
        assert exc.retry_after == confirm_after()
    for exc in [*(first[u] for u in USERS if u not in early), *retried.values()]:
        assert isinstance(exc, TransientError)
        assert str(exc).startswith(APP_MESSAGE) and "\n" not in str(exc)
        assert exc.retry_after == refusals.APP_FAULT_RETRY
    assert len(app_alarms(caplog)) == 1  # logged once per window, however many refusals
    assert "accounts=3" in app_alarms(caplog)[0].getMessage()
    assert RefusalGuard(data, get_settings()).refused() == USERS
    got = counters(data, get_settings())
    assert got["social.twitter.refused_once"] == len(early)
    assert got["social.twitter.app_refused"] == 2 * len(USERS) - len(early)
    assert "social.twitter.unlinked" not in got
    assert standin.tweets() == []
    records = PostRecords(data, get_settings())
    assert all(records.pending(photo, "twitter") is None for photo in users.values())

    # The secret fixed, the retries post: every account was kept.
    configure(FARM_TWITTER_CONSUMER_SECRET=CONSUMER_SECRET)
    assert [attempt(user, photo) for user, photo in users.items()] == [None] * len(USERS)
    assert sorted(t.user for t in standin.tweets()) == [f"user{u}" for u in USERS]


def test_refused_one_by_one_at_most_two_accounts_are_unlinked_then_none(
        standin: SocialStandIn, users: dict[int, int], configure: Configure, clock: Clock,
        data: redis.Redis, caplog: pytest.LogCaptureFixture) -> None:
    """Each user's post refused, and retried, before the next user's comes: the first accounts
    look like revoked ones until APP_FAULT_ACCOUNTS are refused within the window."""
    configure(FARM_TWITTER_CONSUMER_SECRET="rotated-by-mistake")
    last: dict[int, BaseException | None] = {}
    for user, photo in users.items():
        exc = attempt(user, photo)
        if exc is not None and CONFIRMING in str(exc):
            clock.advance(confirm_after())
            exc = attempt(user, photo)
        last[user] = exc
        clock.advance(5)

    unlinked = [user for user, exc in last.items() if type(exc) is PermanentError]
    assert unlinked == USERS[:APP_FAULT_ACCOUNTS - 1]
    assert still_linked(data) == USERS[APP_FAULT_ACCOUNTS - 1:]
    for user in unlinked:
        assert "unlinked" in str(last[user])
    for user in USERS[APP_FAULT_ACCOUNTS - 1:]:
        assert type(last[user]) is TransientError and str(last[user]).startswith(APP_MESSAGE)
    assert len(app_alarms(caplog)) == 1

    # Those unlinked before the alarm stay unlinked: their posts are skipped, saying why.
    accounts = LinkedAccounts(data, get_settings())
    for user in unlinked:
        gone = accounts.last_unlink(user, "twitter")
        assert gone is not None and "401" in gone.reason
        out = crosspost(users[user], user, "twitter", "hello")
        assert out.status == "skipped" and "unlinked" in out.reason

    # Refusals stopped for a window: the alarm is over, a new refusal is one account's again.
    clock.advance(refusals.REFUSAL_WINDOW + 1)
    newcomer = 106
    accounts.link_twitter(newcomer, *standin.add_x_user("newcomer"))
    photo = new_photo_id()
    store_full(photo)
    assert CONFIRMING in str(attempt(newcomer, photo))


def test_a_single_revoked_token_unlinks_that_account_alone(
        standin: SocialStandIn, users: dict[int, int], clock: Clock, data: redis.Redis) -> None:
    revoked = USERS[0]
    token = LinkedAccounts(data, get_settings()).get(revoked, "twitter")
    assert token is not None
    standin.revoke(token.token)
    outcomes = {user: attempt(user, photo) for user, photo in users.items()}
    assert CONFIRMING in str(outcomes[revoked])
    assert all(outcomes[user] is None for user in USERS[1:])  # the app's credentials work
    clock.advance(confirm_after())
    again = attempt(revoked, users[revoked])
    assert type(again) is PermanentError and "unlinked" in str(again)
    assert still_linked(data) == USERS[1:]
    assert len(standin.tweets()) == len(USERS) - 1


def test_workers_refused_at_once_unlink_at_most_two_accounts(
        data: redis.Redis, configure: Configure, clock: Clock,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Ten threads judging ten accounts' refusals at the same moment (each past its
    confirmation): one MULTI each, so each sees its own count and at most two unlink."""
    monkeypatch.setattr(refusals, "CONFIRM_AFTER", 0.0)
    s = get_settings()
    start = threading.Barrier(10)
    verdicts: list[str] = []
    lock = threading.Lock()

    def judge(user: int) -> None:
        guard = RefusalGuard(redis.Redis.from_url(s.redis_url, decode_responses=True), s)
        start.wait(10)
        verdict, _ = guard.judge(user)
        with lock:
            verdicts.append(verdict)

    threads = [threading.Thread(target=judge, args=(200 + i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(verdicts) == ["app"] * 8 + ["unlink"] * 2

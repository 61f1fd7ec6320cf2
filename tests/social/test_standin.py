"""The local stand-in (workers/demo_social.py) takes what the real tweepy and facebook-sdk send,
and refuses what X and Facebook would: a bad, replayed, stale or missing OAuth 1.0a signature,
a revoked token; and its knobs (throttling, HTML 502s, usage headers) reach the farm as the
real APIs' answers would."""

from __future__ import annotations

import logging
import time

import pytest
import redis
import requests
from requests_oauthlib import OAuth1
from tweepy.errors import Unauthorized

from config.settings import get_settings
from tasks.core.errors import PermanentError, RateLimited, TransientError
from tasks.core.ratelimit import Limit, RateLimits
from tasks.social.accounts import Account, LinkedAccounts
from tasks.social.crosspost import crosspost
from tasks.social.posts import PostRecords
from tasks.social.twitter import XClient
from tests.social.conftest import (
    CONSUMER_KEY,
    CONSUMER_SECRET,
    Clock,
    Configure,
    confirm_after,
    jpeg_bytes,
    new_photo_id,
    store_full,
)
from workers.demo_social import SocialStandIn

OWNER = 42


@pytest.fixture
def linked(standin: SocialStandIn, data: redis.Redis) -> dict[str, Account]:
    accounts = LinkedAccounts(data, get_settings())
    token, secret = standin.add_x_user("anna")
    page_id, page_token = standin.add_page("Anna's photos")
    return {"twitter": accounts.link_twitter(OWNER, token, secret, handle="anna"),
            "facebook": accounts.link_facebook(OWNER, page_id, page_token, "Anna's photos")}


def signed(x: Account, consumer_secret: str = CONSUMER_SECRET, **extra: str) -> OAuth1:
    return OAuth1(CONSUMER_KEY, client_secret=consumer_secret, resource_owner_key=x.token,
                  resource_owner_secret=x.secret, **extra)


def test_tweepy_is_accepted_and_a_wrong_consumer_secret_is_refused(
        standin: SocialStandIn, linked: dict[str, Account], configure: Configure) -> None:
    x = linked["twitter"]
    client = XClient(get_settings(), x.token, x.secret)
    media = client.upload_image(jpeg_bytes())
    assert client.create_tweet(text="hello", media_ids=[media]).data["text"] == "hello"
    bad = XClient(configure(FARM_TWITTER_CONSUMER_SECRET="not-the-secret"), x.token, x.secret)
    with pytest.raises(Unauthorized):
        bad.upload_image(jpeg_bytes())
    wrong_user = XClient(get_settings(), x.token, "not-the-token-secret")
    with pytest.raises(Unauthorized):
        wrong_user.create_tweet(text="hi")
    assert [t.text for t in standin.tweets()] == ["hello"]


def test_a_bad_signature_through_crosspost_is_not_taken_for_a_revoked_account_at_once(
        standin: SocialStandIn, linked: dict[str, Account], configure: Configure,
        data: redis.Redis, clock: Clock) -> None:
    configure(FARM_TWITTER_CONSUMER_SECRET="rotated-by-mistake")
    photo = new_photo_id()
    store_full(photo)
    with pytest.raises(TransientError, match="401"):
        crosspost(photo, OWNER, "twitter")
    assert LinkedAccounts(data, get_settings()).get(OWNER, "twitter") is not None
    assert standin.tweets() == [] and standin.requests()[0].status == 401
    # One account alone cannot tell a wrong consumer secret from a revoked token: refused again
    # a retry later, it is unlinked (tests/social/test_refusals.py: several accounts).
    clock.advance(confirm_after())
    with pytest.raises(PermanentError, match=r"401.*unlinked"):
        crosspost(photo, OWNER, "twitter")
    assert LinkedAccounts(data, get_settings()).get(OWNER, "twitter") is None


def test_unsigned_tampered_replayed_and_stale_requests_are_refused(
        standin: SocialStandIn, linked: dict[str, Account]) -> None:
    x = linked["twitter"]
    tweets = f"{standin.url}/2/tweets"
    assert requests.post(tweets, json={"text": "a"}, timeout=5).status_code == 401
    ok = requests.post(tweets, json={"text": "b"}, auth=signed(x), timeout=5)
    assert ok.status_code == 201
    with requests.Session() as session:  # the very same signed request, sent twice
        prepared = requests.Request("POST", tweets, json={"text": "c"}, auth=signed(x)).prepare()
        assert session.send(prepared, timeout=5).status_code == 201
        assert session.send(prepared, timeout=5).status_code == 401
        # signed for one URL, sent to another
        prepared = requests.Request("POST", tweets + "?x=1", json={"text": "d"},
                                    auth=signed(x)).prepare()
        prepared.url = tweets + "?x=2"
        assert session.send(prepared, timeout=5).status_code == 401
    stale = signed(x, timestamp=str(int(time.time()) - 3600))
    assert requests.post(tweets, json={"text": "e"}, auth=stale, timeout=5).status_code == 401
    wrong = signed(x, consumer_secret="wrong")
    assert requests.post(tweets, json={"text": "f"}, auth=wrong, timeout=5).status_code == 401
    assert [t.text for t in standin.tweets()] == ["b", "c"]


@pytest.mark.parametrize("network", ["twitter", "facebook"])
def test_a_revoked_token_unlinks_the_account(standin: SocialStandIn, linked: dict[str, Account],
                                             data: redis.Redis, clock: Clock,
                                             network: str) -> None:
    standin.revoke(linked[network].token)
    photo = new_photo_id()
    store_full(photo)
    if network == "twitter":  # X: confirmed by a second refusal, a retry later
        with pytest.raises(TransientError, match="unlinked if X refuses it again"):
            crosspost(photo, OWNER, network)
        clock.advance(confirm_after())
    with pytest.raises(PermanentError, match="unlinked"):
        crosspost(photo, OWNER, network)
    accounts = LinkedAccounts(data, get_settings())
    assert accounts.get(OWNER, network) is None
    gone = accounts.last_unlink(OWNER, network)
    assert gone is not None and ("190" in gone.reason if network == "facebook"
                                 else "401" in gone.reason)


def test_a_token_of_another_page_fails_without_unlinking(
        standin: SocialStandIn, linked: dict[str, Account], data: redis.Redis) -> None:
    _, other_token = standin.add_page("someone else's")
    accounts = LinkedAccounts(data, get_settings())
    accounts.link_facebook(OWNER, linked["facebook"].page_id, other_token)
    photo = new_photo_id()
    store_full(photo)
    with pytest.raises(PermanentError, match=r"error 200 .*Permissions"):
        crosspost(photo, OWNER, "facebook")
    assert accounts.get(OWNER, "facebook") is not None


def test_throttling_reaches_the_farm_as_rate_limits(standin: SocialStandIn,
                                                    linked: dict[str, Account]) -> None:
    photo = new_photo_id()
    store_full(photo)
    standin.throttle_next("twitter", reset_in=90)
    with pytest.raises(RateLimited) as raised:
        crosspost(photo, OWNER, "twitter")
    assert 85 < (raised.value.retry_after or 0) <= 91
    standin.throttle_next("facebook", code=4, regain_minutes=3)
    with pytest.raises(RateLimited) as raised:
        crosspost(photo, OWNER, "facebook")
    assert raised.value.retry_after == 180
    limits = RateLimits(get_settings())
    assert 175 < limits.paused_for([Limit("1/hour", ("facebook", "app"))]) <= 180
    assert 85 < limits.paused_for([Limit("1/hour", ("twitter", "account", str(OWNER)))]) <= 91


@pytest.mark.parametrize("network", ["twitter", "facebook"])
def test_an_html_502_is_transient_and_the_retry_posts_once(
        standin: SocialStandIn, linked: dict[str, Account], data: redis.Redis,
        network: str) -> None:
    photo = new_photo_id()
    store_full(photo)
    standin.fail_next_html(1, network)
    with pytest.raises(TransientError):
        crosspost(photo, OWNER, network)
    assert PostRecords(data, get_settings()).pending(photo, network) is not None
    assert crosspost(photo, OWNER, network).status == "posted"
    posted = standin.tweets() if network == "twitter" else standin.page_photos()
    assert len(posted) == 1


def test_a_big_image_goes_up_in_chunks(standin: SocialStandIn,
                                       linked: dict[str, Account]) -> None:
    photo = new_photo_id()
    store_full(photo, jpeg_bytes(9 * 1024 * 1024))
    out = crosspost(photo, OWNER, "twitter")
    assert out.status == "posted"
    paths = [r.path.rsplit("/", 1)[-1] for r in standin.requests()]
    assert paths == ["initialize", "append", "append", "append", "finalize", "tweets"]
    (tweet,) = standin.tweets()
    assert len(tweet.media_ids) == 1


def test_a_success_near_the_page_limit_pauses_the_page(
        standin: SocialStandIn, linked: dict[str, Account]) -> None:
    standin.set_page_usage(95, regain_minutes=2)
    photo = new_photo_id()
    store_full(photo)
    assert crosspost(photo, OWNER, "facebook").status == "posted"
    (posted,) = standin.page_photos()
    assert posted.version == get_settings().facebook_graph_version
    scope = Limit("1/hour", ("facebook", "account", str(OWNER)))
    assert 115 < RateLimits(get_settings()).paused_for([scope]) <= 120


def test_no_credential_reaches_the_logs_even_at_debug(
        standin: SocialStandIn, linked: dict[str, Account], data: redis.Redis,
        caplog: pytest.LogCaptureFixture, clock: Clock) -> None:
    caplog.set_level(logging.DEBUG)
    photo = new_photo_id()
    store_full(photo)
    PostRecords(data, get_settings()).mark_pending(photo, "facebook", "page")  # a GET too
    crosspost(photo, OWNER, "facebook", "logged")
    crosspost(photo, OWNER, "twitter", "logged")
    standin.revoke(linked["twitter"].token)
    other = new_photo_id()
    store_full(other)
    with pytest.raises(TransientError):  # refused once: the account kept until confirmed
        crosspost(other, OWNER, "twitter")
    clock.advance(confirm_after())
    with pytest.raises(PermanentError):
        crosspost(other, OWNER, "twitter")
    text = caplog.text
    assert "outcome=refused_once" in text and "outcome=unlinked" in text
    assert "access_token=[redacted]" in text  # urllib3's request line was there, redacted
    assert "outcome=posted" in text
    for account in linked.values():
        assert account.token not in text
        assert not account.secret or account.secret not in text

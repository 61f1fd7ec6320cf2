"""Posting to X through the real tweepy, intercepted at the HTTP layer (``responses``): the exact
requests (v2 media upload, one-shot and chunked; the tweet), the OAuth 1.0a signature checked
here by hand over RFC 5849's base string, the timeout on every request, and what each of X's
refusals does to the account and the task."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import pytest
import redis
import requests
import responses

from config.settings import get_settings
from tasks.core.errors import PermanentError, RateLimited, TransientError
from tasks.core.ratelimit import Limit, RateLimits
from tasks.social.accounts import Account, LinkedAccounts
from tasks.social.captions import link_for, tweet_text
from tasks.social.crosspost import crosspost
from tasks.social.posts import PostRecords
from tests.social.conftest import (
    CONSUMER_KEY,
    CONSUMER_SECRET,
    OWNER,
    X_SECRET,
    X_TOKEN,
    Clock,
    confirm_after,
    jpeg_bytes,
    new_photo_id,
    store_full,
)

API = "https://api.x.com"
UPLOAD = f"{API}/2/media/upload"
TWEETS = f"{API}/2/tweets"


@pytest.fixture
def mocked(x_account: Account) -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield rsps


def posts(data: redis.Redis) -> PostRecords:
    return PostRecords(data, get_settings())


def rfc3986(text: str) -> str:
    return quote(text, safe="-._~")


def check_oauth(request: Any, token_secret: str = X_SECRET) -> dict[str, str]:
    """The Authorization header's OAuth 1.0a parameters, its HMAC-SHA1 signature recomputed here
    from RFC 5849 (section 3.4) with the consumer and token secrets."""
    header = request.headers["Authorization"]
    header = header.decode() if isinstance(header, bytes) else header
    assert header.startswith("OAuth ")
    oauth = {}
    for item in header[len("OAuth "):].split(","):
        name, _, value = item.strip().partition("=")
        oauth[unquote(name)] = unquote(value.strip('"'))
    url = urlsplit(request.url)
    params = [(k, v) for k, v in oauth.items() if k not in ("oauth_signature", "realm")]
    params += parse_qsl(url.query, keep_blank_values=True)
    # A multipart or JSON body is not part of the base string (3.4.1.3.1)
    normalized = "&".join(f"{k}={v}" for k, v in sorted(
        (rfc3986(k), rfc3986(v)) for k, v in params))
    base_uri = f"{url.scheme}://{url.netloc.lower()}{url.path}"
    base = "&".join((request.method.upper(), rfc3986(base_uri), rfc3986(normalized)))
    key = f"{rfc3986(CONSUMER_SECRET)}&{rfc3986(token_secret)}".encode()
    expected = base64.b64encode(hmac.new(key, base.encode(), hashlib.sha1).digest()).decode()
    assert oauth["oauth_signature"] == expected
    assert oauth["oauth_signature_method"] == "HMAC-SHA1"
    assert oauth["oauth_consumer_key"] == CONSUMER_KEY
    assert oauth["oauth_token"] == X_TOKEN
    assert oauth["oauth_version"] == "1.0"
    assert abs(int(oauth["oauth_timestamp"]) - time.time()) < 60
    return oauth


def multipart(request: Any) -> dict[str, tuple[dict[str, str], bytes]]:
    """name -> (part headers, bytes), parsed here from the raw body."""
    ctype = request.headers["Content-Type"]
    assert ctype.startswith("multipart/form-data; boundary=")
    delimiter = b"--" + ctype.split("boundary=", 1)[1].encode()
    out = {}
    for piece in request.body.split(delimiter)[1:-1]:
        head, _, body = piece[2:-2].partition(b"\r\n\r\n")
        headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n"))
        name = headers["Content-Disposition"].split('name="', 1)[1].split('"', 1)[0]
        out[name] = (headers, body)
    return out


def test_a_photo_is_uploaded_one_shot_then_tweeted_signed_and_with_a_timeout(
        mocked: responses.RequestsMock, data: redis.Redis) -> None:
    photo = new_photo_id()
    image = store_full(photo)
    mocked.post(UPLOAD, json={"data": {"id": "1880028106020515840", "media_key": "3_188",
                                       "size": len(image), "expires_after_secs": 86400}})
    mocked.post(TWEETS, status=201, json={"data": {"id": "1445880548472328192",
                                                   "text": "sunset"}})
    out = crosspost(photo, OWNER, "twitter", "sunset over the harbour")
    assert (out.status, out.post_id, out.account) == ("posted", "1445880548472328192", "@anna")

    upload, tweet = mocked.calls
    assert (upload.request.method, upload.request.url) == ("POST", UPLOAD)
    parts = multipart(upload.request)
    assert parts["media"][1] == image  # every byte, CR LFs and all
    assert parts["media"][0]["Content-Type"] == "image/jpeg"
    assert parts["media_category"][1] == b"tweet_image"
    assert parts["media_type"][1] == b"image/jpeg"
    check_oauth(upload.request)
    with pytest.raises(AssertionError):  # the check is a real one
        check_oauth(upload.request, token_secret="another-secret")

    assert (tweet.request.method, tweet.request.url) == ("POST", TWEETS)
    assert json.loads(tweet.request.body) == {
        "text": f"sunset over the harbour {link_for(photo, get_settings())}",
        "media": {"media_ids": ["1880028106020515840"]}}
    assert tweet.request.headers["Content-Type"] == "application/json"
    nonces = {check_oauth(c.request)["oauth_nonce"] for c in mocked.calls}
    assert len(nonces) == 2
    for call in mocked.calls:  # tweepy itself passes none; a stalled socket would hang a thread
        assert call.request.req_kwargs["timeout"] == get_settings().social_timeout

    record = posts(data).get(photo, "twitter")
    assert record is not None and record["post_id"] == "1445880548472328192"
    assert record["status"] == "posted" and record["account"] == "@anna"
    assert posts(data).pending(photo, "twitter") is None


def test_the_api_host_and_timeout_come_from_the_settings(
        x_account: Account, configure: Any) -> None:
    configure(FARM_TWITTER_API_URL="http://x.test:8080", FARM_SOCIAL_TIMEOUT="3.5")
    photo = new_photo_id()
    store_full(photo)
    with responses.RequestsMock() as rsps:
        rsps.post("http://x.test:8080/2/media/upload", json={"data": {"id": "5"}})
        rsps.post("http://x.test:8080/2/tweets", status=201, json={"data": {"id": "6"}})
        assert crosspost(photo, OWNER, "twitter").post_id == "6"
        assert [c.request.req_kwargs["timeout"] for c in rsps.calls] == [3.5, 3.5]
        for call in rsps.calls:
            check_oauth(call.request)


def test_an_image_over_5_mb_goes_in_chunks(mocked: responses.RequestsMock,
                                           data: redis.Redis) -> None:
    photo = new_photo_id()
    image = store_full(photo, jpeg_bytes(6 * 1024 * 1024 + 123))
    mocked.post(f"{UPLOAD}/initialize", json={"data": {"id": "77", "media_key": "3_77",
                                                       "expires_after_secs": 86400}})
    mocked.post(f"{UPLOAD}/77/append", json={"data": {"expires_at": 1}})
    mocked.post(f"{UPLOAD}/77/finalize", json={"data": {"id": "77", "size": len(image)}})
    mocked.post(TWEETS, status=201, json={"data": {"id": "900"}})
    assert crosspost(photo, OWNER, "twitter").post_id == "900"

    urls = [c.request.url for c in mocked.calls]
    assert urls == [f"{UPLOAD}/initialize", f"{UPLOAD}/77/append", f"{UPLOAD}/77/append",
                    f"{UPLOAD}/77/finalize", TWEETS]
    assert json.loads(mocked.calls[0].request.body) == {
        "media_type": "image/jpeg", "total_bytes": len(image), "media_category": "tweet_image"}
    segments = [multipart(c.request) for c in mocked.calls[1:3]]
    assert [s["segment_index"][1] for s in segments] == [b"0", b"1"]
    assert b"".join(s["media"][1] for s in segments) == image
    assert json.loads(mocked.calls[4].request.body)["media"] == {"media_ids": ["77"]}
    for call in mocked.calls:
        check_oauth(call.request)
        assert call.request.req_kwargs["timeout"] == 20.0


def test_a_long_caption_is_trimmed_to_fit(mocked: responses.RequestsMock) -> None:
    photo = new_photo_id()
    store_full(photo)
    caption = "夕焼けの港 " * 100
    mocked.post(UPLOAD, json={"data": {"id": "1"}})
    mocked.post(TWEETS, status=201, json={"data": {"id": "2"}})
    crosspost(photo, OWNER, "twitter", caption)
    text = json.loads(mocked.calls[1].request.body)["text"]
    assert text == tweet_text(caption, link_for(photo, get_settings()))
    assert text.endswith("… " + link_for(photo, get_settings()))


def test_429_waits_until_x_resets_and_pauses_the_account_farm_wide(
        mocked: responses.RequestsMock, data: redis.Redis) -> None:
    photo = new_photo_id()
    store_full(photo)
    reset = int(time.time()) + 120
    mocked.post(UPLOAD, json={"data": {"id": "1"}})
    mocked.post(TWEETS, status=429, json={"title": "Too Many Requests", "status": 429},
                headers={"x-rate-limit-reset": str(reset), "x-rate-limit-remaining": "0"})
    with pytest.raises(RateLimited) as raised:
        crosspost(photo, OWNER, "twitter")
    assert 115 < (raised.value.retry_after or 0) <= 121
    scope = Limit("100/15minutes", ("twitter", "account", str(OWNER)))
    assert 115 < RateLimits(get_settings()).paused_for([scope]) <= 121
    assert posts(data).pending(photo, "twitter") is None  # nothing was posted

    # While paused, the next post waits without a request.
    other = new_photo_id()
    store_full(other)
    calls = len(mocked.calls)
    with pytest.raises(RateLimited):
        crosspost(other, OWNER, "twitter")
    assert len(mocked.calls) == calls


@pytest.mark.parametrize(("status", "body"), [
    (401, {"title": "Unauthorized", "type": "about:blank", "status": 401,
           "detail": "Unauthorized"}),
    (403, {"title": "Forbidden", "type": "about:blank", "status": 403,
           "detail": "You are not permitted to perform this action."}),
])
def test_401_and_403_unlink_the_account_once_confirmed_and_fail_for_good(
        mocked: responses.RequestsMock, accounts: LinkedAccounts, data: redis.Redis,
        clock: Clock, status: int, body: dict[str, Any]) -> None:
    photo = new_photo_id()
    store_full(photo)
    mocked.post(UPLOAD, json={"data": {"id": "1"}})
    mocked.post(TWEETS, status=status, json=body)
    # The first refusal could be the app's credentials (tasks/social/refusals.py): a retry.
    with pytest.raises(TransientError, match="unlinked if X refuses it again") as first:
        crosspost(photo, OWNER, "twitter")
    assert not isinstance(first.value, RateLimited)
    assert first.value.retry_after == confirm_after()
    assert accounts.get(OWNER, "twitter") is not None
    assert posts(data).pending(photo, "twitter") is None  # nothing was posted
    clock.advance(confirm_after())
    with pytest.raises(PermanentError, match="unlinked"):
        crosspost(photo, OWNER, "twitter")
    assert accounts.get(OWNER, "twitter") is None
    assert len(mocked.calls) == 4
    gone = accounts.last_unlink(OWNER, "twitter")
    assert gone is not None and str(status) in gone.reason and gone.name == "anna"
    assert X_TOKEN not in gone.reason and X_SECRET not in gone.reason
    assert posts(data).get(photo, "twitter") is None


def test_an_app_level_403_does_not_unlink_the_user(mocked: responses.RequestsMock,
                                                   accounts: LinkedAccounts) -> None:
    photo = new_photo_id()
    store_full(photo)
    mocked.post(UPLOAD, status=403, json={
        "client_id": "1", "reason": "client-not-enrolled", "title": "Client Forbidden",
        "detail": "When authenticating requests to the Twitter API v2 endpoints, you must use "
                  "keys and tokens from a Twitter developer App that is attached to a Project."})
    with pytest.raises(PermanentError, match="the farm's app"):
        crosspost(photo, OWNER, "twitter")
    assert accounts.get(OWNER, "twitter") is not None


def test_a_duplicate_refusal_is_recorded_as_posted(mocked: responses.RequestsMock,
                                                   data: redis.Redis,
                                                   accounts: LinkedAccounts) -> None:
    photo = new_photo_id()
    store_full(photo)
    mocked.post(UPLOAD, json={"data": {"id": "1"}})
    mocked.post(TWEETS, status=403, json={
        "detail": "You are not allowed to create a Tweet with duplicate content.",
        "type": "about:blank", "title": "Forbidden", "status": 403})
    out = crosspost(photo, OWNER, "twitter")
    assert (out.status, out.post_id) == ("reconciled", "")
    record = posts(data).get(photo, "twitter")
    assert record is not None and (record["status"], record["how"]) == ("posted", "duplicate")
    assert accounts.get(OWNER, "twitter") is not None  # not a revoked account
    assert crosspost(photo, OWNER, "twitter").status == "already posted"
    assert len(mocked.calls) == 2


@pytest.mark.parametrize("failure", [
    {"status": 503, "json": {"title": "Service Unavailable", "status": 503}},
    {"status": 502, "body": "<html><body>Bad Gateway</body></html>",
     "content_type": "text/html"},
    {"body": requests.ReadTimeout("read timed out")},
    {"body": requests.ConnectionError("connection reset")},
])
def test_server_errors_and_timeouts_are_transient_and_keep_the_pending_marker(
        mocked: responses.RequestsMock, data: redis.Redis, failure: dict[str, Any]) -> None:
    photo = new_photo_id()
    store_full(photo)
    mocked.post(UPLOAD, json={"data": {"id": "1"}})
    mocked.post(TWEETS, **failure)
    with pytest.raises(TransientError) as raised:
        crosspost(photo, OWNER, "twitter")
    assert not isinstance(raised.value, RateLimited)
    assert X_TOKEN not in str(raised.value)
    # The tweet may have been posted: the retry reconciles (by posting again: X refuses a
    # duplicate), and goes ahead when X says nothing of the sort.
    assert posts(data).pending(photo, "twitter") is not None
    assert posts(data).get(photo, "twitter") is None
    mocked.replace(responses.POST, TWEETS, status=201, json={"data": {"id": "31"}})
    assert crosspost(photo, OWNER, "twitter").post_id == "31"
    assert posts(data).pending(photo, "twitter") is None


def test_a_bad_request_fails_for_good_and_clears_the_marker(mocked: responses.RequestsMock,
                                                            data: redis.Redis) -> None:
    photo = new_photo_id()
    store_full(photo)
    mocked.post(UPLOAD, status=400, json={"errors": [{"message": "media type unsupported"}],
                                          "title": "Invalid Request"})
    with pytest.raises(PermanentError, match="media type unsupported"):
        crosspost(photo, OWNER, "twitter")
    assert posts(data).pending(photo, "twitter") is None


def test_no_consumer_key_is_a_permanent_configuration_error(
        mocked: responses.RequestsMock, configure: Any) -> None:
    configure(FARM_TWITTER_CONSUMER_KEY="", FARM_TWITTER_CONSUMER_SECRET="")
    photo = new_photo_id()
    store_full(photo)
    with pytest.raises(PermanentError, match="FARM_TWITTER_CONSUMER_KEY"):
        crosspost(photo, OWNER, "twitter")
    assert len(mocked.calls) == 0

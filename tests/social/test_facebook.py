"""Posting to a Facebook Page through the real facebook-sdk, intercepted at the HTTP layer
(``responses``): the exact request (the version from the settings, multipart ``source`` and
``message``, the Page token, the timeout), the host rebased when the settings name another, the
usage headers acted on, and what each Graph error does to the account and the task."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import redis
import requests
import responses

from config.settings import get_settings
from tasks.core.errors import PermanentError, RateLimited, TransientError
from tasks.core.ratelimit import Limit, RateLimits
from tasks.social.accounts import Account, LinkedAccounts
from tasks.social.captions import link_for
from tasks.social.crosspost import crosspost
from tasks.social.posts import PostRecords
from tests.social.conftest import OWNER, PAGE_ID, PAGE_TOKEN, new_photo_id, store_full
from tests.social.test_twitter import multipart

GRAPH = "https://graph.facebook.com"
PHOTOS = f"{GRAPH}/v24.0/{PAGE_ID}/photos"
ACCOUNT_SCOPE = Limit("50/hour", ("facebook", "account", str(OWNER)))
APP_SCOPE = Limit("600/hour", ("facebook", "app"))


@pytest.fixture
def mocked(page: Account) -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield rsps


def posts(data: redis.Redis) -> PostRecords:
    return PostRecords(data, get_settings())


def graph_error(code: int, message: str = "boom", **extra: Any) -> dict[str, Any]:
    return {"error": {"message": message, "type": "OAuthException", "code": code,
                      "fbtrace_id": "AbCdEf", **extra}}


def paused(limit: Limit) -> float:
    return RateLimits(get_settings()).paused_for([limit])


def test_the_photo_goes_to_the_pages_photos_with_its_message_token_and_timeout(
        mocked: responses.RequestsMock, data: redis.Redis) -> None:
    photo = new_photo_id()
    image = store_full(photo)
    mocked.post(PHOTOS, json={"id": "5551212", "post_id": f"{PAGE_ID}_998877"})
    out = crosspost(photo, OWNER, "facebook", "harbour at dusk")
    assert (out.status, out.post_id, out.account) == ("posted", "5551212",
                                                      f"page:{PAGE_ID} (Anna's photos)")
    (call,) = mocked.calls
    assert (call.request.method, call.request.url) == ("POST", PHOTOS)
    parts = multipart(call.request)
    assert parts["source"][1] == image
    assert parts["source"][0]["Content-Type"] == "image/jpeg"
    link = link_for(photo, get_settings())
    assert parts["message"][1].decode() == f"harbour at dusk\n\n{link}"
    assert parts["access_token"][1].decode() == PAGE_TOKEN
    assert call.request.req_kwargs["timeout"] == 20.0
    record = posts(data).get(photo, "facebook")
    assert record is not None and (record["status"], record["post_id"]) == ("posted", "5551212")
    assert crosspost(photo, OWNER, "facebook").status == "already posted"
    assert len(mocked.calls) == 1


def test_version_host_and_timeout_come_from_the_settings(page: Account, configure: Any) -> None:
    configure(FARM_FACEBOOK_GRAPH_VERSION="v23.0", FARM_FACEBOOK_GRAPH_URL="http://graph.test:81/",
              FARM_SOCIAL_TIMEOUT="7")
    photo = new_photo_id()
    store_full(photo)
    with responses.RequestsMock() as rsps:  # any request to graph.facebook.com would fail
        rsps.post(f"http://graph.test:81/v23.0/{PAGE_ID}/photos", json={"id": "1"})
        assert crosspost(photo, OWNER, "facebook").post_id == "1"
        assert rsps.calls[0].request.req_kwargs["timeout"] == 7.0


@pytest.mark.parametrize(("code", "scope"), [
    (4, APP_SCOPE), (17, ACCOUNT_SCOPE), (32, ACCOUNT_SCOPE), (613, ACCOUNT_SCOPE),
    (80001, ACCOUNT_SCOPE)])
def test_rate_limit_codes_wait_as_long_as_facebook_estimates_and_pause_the_scope(
        mocked: responses.RequestsMock, data: redis.Redis, code: int, scope: Limit) -> None:
    photo = new_photo_id()
    store_full(photo)
    usage = {"call_count": 100, "total_cputime": 20, "total_time": 30,
             "estimated_time_to_regain_access": 7}
    header = "X-App-Usage" if code == 4 else "X-Page-Usage"
    mocked.post(PHOTOS, status=400, json=graph_error(code, f"({code}) limit reached"),
                headers={header: json.dumps(usage)})
    with pytest.raises(RateLimited) as raised:
        crosspost(photo, OWNER, "facebook")
    assert raised.value.retry_after == 7 * 60
    assert 415 < paused(scope) <= 420
    assert posts(data).pending(photo, "facebook") is None  # refused: nothing was posted
    calls = len(mocked.calls)
    with pytest.raises(RateLimited):  # the farm holds off without asking
        crosspost(photo, OWNER, "facebook")
    assert len(mocked.calls) == calls


def test_the_business_use_case_header_is_read_too(mocked: responses.RequestsMock) -> None:
    photo = new_photo_id()
    store_full(photo)
    buc = {"112233": [{"type": "pages", "call_count": 100, "total_cputime": 5, "total_time": 5,
                       "estimated_time_to_regain_access": 12}]}
    mocked.post(PHOTOS, status=400, json=graph_error(80001, "(#80001) too many calls"),
                headers={"X-Business-Use-Case-Usage": json.dumps(buc)})
    with pytest.raises(RateLimited) as raised:
        crosspost(photo, OWNER, "facebook")
    assert raised.value.retry_after == 12 * 60


def test_a_throttle_without_an_estimate_waits_the_default(mocked: responses.RequestsMock) -> None:
    from tasks.social.facebook import DEFAULT_THROTTLE_WAIT

    photo = new_photo_id()
    store_full(photo)
    mocked.post(PHOTOS, status=400, json=graph_error(32))
    with pytest.raises(RateLimited) as raised:
        crosspost(photo, OWNER, "facebook")
    assert raised.value.retry_after == DEFAULT_THROTTLE_WAIT


@pytest.mark.parametrize(("header", "usage", "scope", "wait"), [
    ("X-Page-Usage", {"call_count": 93, "total_cputime": 10, "total_time": 10,
                      "estimated_time_to_regain_access": 3}, ACCOUNT_SCOPE, 180),
    ("X-App-Usage", {"call_count": 10, "total_cputime": 91, "total_time": 10},
     APP_SCOPE, 60),
])
def test_a_success_near_a_limit_pauses_that_scope(
        mocked: responses.RequestsMock, header: str, usage: dict[str, int], scope: Limit,
        wait: int) -> None:
    photo = new_photo_id()
    store_full(photo)
    mocked.post(PHOTOS, json={"id": "1"}, headers={header: json.dumps(usage)})
    assert crosspost(photo, OWNER, "facebook").status == "posted"
    assert wait - 5 < paused(scope) <= wait


def test_a_success_well_under_the_limits_pauses_nothing(mocked: responses.RequestsMock) -> None:
    photo = new_photo_id()
    store_full(photo)
    mocked.post(PHOTOS, json={"id": "1"}, headers={
        "X-App-Usage": json.dumps({"call_count": 40, "total_cputime": 2, "total_time": 2}),
        "X-Page-Usage": json.dumps({"call_count": 89, "total_cputime": 2, "total_time": 2})})
    crosspost(photo, OWNER, "facebook")
    assert paused(APP_SCOPE) == paused(ACCOUNT_SCOPE) == 0


def test_an_expired_or_revoked_token_unlinks_the_page(
        mocked: responses.RequestsMock, accounts: LinkedAccounts, data: redis.Redis) -> None:
    photo = new_photo_id()
    store_full(photo)
    mocked.post(PHOTOS, status=400, json=graph_error(
        190, "Error validating access token: Session has expired on Tuesday.", error_subcode=463))
    with pytest.raises(PermanentError, match=r"190.*unlinked"):
        crosspost(photo, OWNER, "facebook")
    assert accounts.get(OWNER, "facebook") is None
    gone = accounts.last_unlink(OWNER, "facebook")
    assert gone is not None and "190" in gone.reason and PAGE_TOKEN not in gone.reason
    assert posts(data).pending(photo, "facebook") is None


@pytest.mark.parametrize("failure", [
    {"status": 502, "body": "<html><body><h1>502 Bad Gateway</h1></body></html>",
     "content_type": "text/html"},
    {"status": 500, "json": graph_error(1, "An unknown error occurred")},
    {"status": 500, "json": graph_error(2, "Service temporarily unavailable")},
    {"status": 400, "json": graph_error(368, "try later", is_transient=True)},
    {"body": requests.ReadTimeout("read timed out")},
    {"body": requests.ConnectionError("connection refused")},
])
def test_server_trouble_is_transient_and_keeps_the_pending_marker(
        mocked: responses.RequestsMock, data: redis.Redis, failure: dict[str, Any]) -> None:
    photo = new_photo_id()
    store_full(photo)
    mocked.post(PHOTOS, **failure)
    with pytest.raises(TransientError) as raised:
        crosspost(photo, OWNER, "facebook")
    assert not isinstance(raised.value, RateLimited)
    assert PAGE_TOKEN not in str(raised.value)
    assert posts(data).pending(photo, "facebook") is not None
    assert posts(data).get(photo, "facebook") is None


def test_other_graph_errors_fail_for_good_naming_the_code(mocked: responses.RequestsMock,
                                                          accounts: LinkedAccounts) -> None:
    photo = new_photo_id()
    store_full(photo)
    mocked.post(PHOTOS, status=400, json=graph_error(100, "(#100) Invalid parameter"))
    with pytest.raises(PermanentError, match=r"100.*Invalid parameter"):
        crosspost(photo, OWNER, "facebook")
    assert accounts.get(OWNER, "facebook") is not None


def listing(photos: list[dict[str, str]]) -> dict[str, Any]:
    return {"data": photos, "paging": {"cursors": {"before": "x", "after": "y"}}}


def test_an_unknown_outcome_is_reconciled_from_the_pages_recent_photos(
        mocked: responses.RequestsMock, data: redis.Redis) -> None:
    photo = new_photo_id()
    store_full(photo)
    link = link_for(photo, get_settings())
    posts(data).mark_pending(photo, "facebook", f"page:{PAGE_ID}")  # an attempt died unanswered
    mocked.get(PHOTOS, json=listing([
        {"id": "1", "name": f"other {link}0", "created_time": "2025-05-01T10:00:00+0000"},
        {"id": "2", "name": f"dusk\n\n{link}", "created_time": "2025-05-01T09:00:00+0000"}]))
    out = crosspost(photo, OWNER, "facebook", "dusk")
    assert (out.status, out.post_id) == ("reconciled", "2")
    (call,) = mocked.calls  # no second post
    assert call.request.method == "GET"
    assert urlsplit(call.request.url)._replace(query="").geturl() == PHOTOS
    assert dict(parse_qsl(urlsplit(call.request.url).query)) == {
        "type": "uploaded", "fields": "id,name,created_time", "limit": "25",
        "access_token": PAGE_TOKEN}
    assert call.request.req_kwargs["timeout"] == 20.0
    record = posts(data).get(photo, "facebook")
    assert record is not None and (record["post_id"], record["how"]) == ("2", "found")
    assert posts(data).pending(photo, "facebook") is None


def test_a_reconciliation_that_finds_nothing_posts(mocked: responses.RequestsMock,
                                                   data: redis.Redis) -> None:
    photo = new_photo_id()
    store_full(photo)
    posts(data).mark_pending(photo, "facebook", f"page:{PAGE_ID}")
    mocked.get(PHOTOS, json=listing([]))
    mocked.post(PHOTOS, json={"id": "3"})
    out = crosspost(photo, OWNER, "facebook")
    assert (out.status, out.post_id) == ("posted", "3")
    assert [c.request.method for c in mocked.calls] == ["GET", "POST"]


def test_a_refusal_after_an_unknown_outcome_keeps_the_marker(mocked: responses.RequestsMock,
                                                             data: redis.Redis) -> None:
    """An earlier attempt may have posted: a later refusal proves nothing about that one."""
    photo = new_photo_id()
    store_full(photo)
    posts(data).mark_pending(photo, "facebook", f"page:{PAGE_ID}")
    mocked.get(PHOTOS, json=listing([]))
    mocked.post(PHOTOS, status=400, json=graph_error(32))
    with pytest.raises(RateLimited):
        crosspost(photo, OWNER, "facebook")
    assert posts(data).pending(photo, "facebook") is not None

"""crosspost end to end against the local stand-in of both APIs (workers/demo_social.py, reached
by the real tweepy and facebook-sdk): never twice, whatever runs again; an attempt whose answer
was lost reconciled (the Page's recent photos; X's duplicate refusal); no account, a deleted
photo, a missing variant; the farm-wide limits before any request; the caption fitted."""

from __future__ import annotations

import pytest
import redis

from config.settings import get_settings
from tasks.core.errors import PermanentError, RateLimited, TransientError
from tasks.core.ratelimit import RateLimits
from tasks.social import crosspost as crosspost_module
from tasks.social.accounts import Account, LinkedAccounts
from tasks.social.captions import link_for, tweet_text, weighted_length
from tasks.social.crosspost import crosspost
from tasks.social.posts import PostRecords
from tests.social.conftest import Configure, new_photo_id, store_full
from workers.demo_social import SocialStandIn

OWNER = 42


class Killed(BaseException):
    """The process dying at a fault point (nothing after it runs, no except clause sees it)."""


@pytest.fixture
def linked(standin: SocialStandIn, data: redis.Redis) -> dict[str, Account]:
    accounts = LinkedAccounts(data, get_settings())
    token, secret = standin.add_x_user("anna")
    page_id, page_token = standin.add_page("Anna's photos")
    return {"twitter": accounts.link_twitter(OWNER, token, secret, handle="anna"),
            "facebook": accounts.link_facebook(OWNER, page_id, page_token, "Anna's photos")}


def posts(data: redis.Redis) -> PostRecords:
    return PostRecords(data, get_settings())


def on_network(api: SocialStandIn, network: str) -> list[str]:
    """The texts posted to ``network`` so far."""
    if network == "twitter":
        return [t.text for t in api.tweets()]
    return [p.message for p in api.page_photos()]


def die_when_answered(monkeypatch: pytest.MonkeyPatch) -> None:
    """The next attempt dies right after the network's answer, before its record."""
    def die_at(point: str) -> None:
        if point == "social.answered":
            monkeypatch.undo()
            raise Killed(point)

    monkeypatch.setattr(crosspost_module, "die_at", die_at)


@pytest.mark.parametrize("network", ["twitter", "facebook"])
def test_posted_once_however_often_it_runs(standin: SocialStandIn, linked: dict[str, Account],
                                           data: redis.Redis, network: str) -> None:
    photo = new_photo_id()
    store_full(photo)
    first = crosspost(photo, OWNER, network, "first light")
    assert first.status == "posted" and first.post_id
    again = crosspost(photo, OWNER, network, "first light")  # a redelivery
    assert (again.status, again.post_id) == ("already posted", first.post_id)
    link = link_for(photo, get_settings())
    expected = f"first light {link}" if network == "twitter" else f"first light\n\n{link}"
    assert on_network(standin, network) == [expected]
    record = posts(data).get(photo, network)
    assert record is not None and record["post_id"] == first.post_id
    assert record["account"] == linked[network].label and record["user_id"] == str(OWNER)
    assert posts(data).pending(photo, network) is None
    counters = data.hgetall("farm:metrics:counters")
    assert counters[f"social.{network}.posted"] == "1"
    assert counters[f"social.{network}.already"] == "1"


def test_the_task_runs_the_same_logic_without_a_broker(standin: SocialStandIn,
                                                       linked: dict[str, Account]) -> None:
    from tasks.social.tasks import crosspost as task

    photo = new_photo_id()
    store_full(photo)
    task(photo, OWNER, "facebook", "via the task")
    task(photo, OWNER, "facebook", "via the task")
    assert len(standin.page_photos()) == 1


def test_facebook_an_attempt_killed_after_the_answer_is_found_on_the_page(
        standin: SocialStandIn, linked: dict[str, Account], data: redis.Redis,
        monkeypatch: pytest.MonkeyPatch) -> None:
    photo = new_photo_id()
    store_full(photo)
    die_when_answered(monkeypatch)
    with pytest.raises(Killed):
        crosspost(photo, OWNER, "facebook", "dusk")
    assert len(standin.page_photos()) == 1  # Facebook has it; we have no record
    assert posts(data).get(photo, "facebook") is None
    assert posts(data).pending(photo, "facebook") is not None
    for _ in range(2):
        standin.hold_page_photo(linked["facebook"].page_id, "another photo, posted since")
    out = crosspost(photo, OWNER, "facebook", "dusk")  # the redelivery
    assert out.status == "reconciled" and out.post_id == standin.page_photos()[0].id
    assert len(standin.page_photos()) == 3  # no second post of this photo
    record = posts(data).get(photo, "facebook")
    assert record is not None and record["how"] == "found"
    assert [r.method for r in standin.requests()] == ["POST", "GET"]
    assert crosspost(photo, OWNER, "facebook", "dusk").status == "already posted"


def test_facebook_a_pending_marker_with_the_photo_already_on_the_page(
        standin: SocialStandIn, linked: dict[str, Account], data: redis.Redis) -> None:
    photo = new_photo_id()
    store_full(photo)
    held = standin.hold_page_photo(linked["facebook"].page_id,
                                   f"dusk\n\n{link_for(photo, get_settings())}")
    posts(data).mark_pending(photo, "facebook", linked["facebook"].label)
    out = crosspost(photo, OWNER, "facebook", "dusk")
    assert (out.status, out.post_id) == ("reconciled", held.id)
    assert [r.method for r in standin.requests()] == ["GET"]


def test_x_an_attempt_killed_after_the_answer_is_settled_by_the_duplicate_refusal(
        standin: SocialStandIn, linked: dict[str, Account], data: redis.Redis,
        monkeypatch: pytest.MonkeyPatch) -> None:
    photo = new_photo_id()
    store_full(photo)
    die_when_answered(monkeypatch)
    with pytest.raises(Killed):
        crosspost(photo, OWNER, "twitter", "harbour")
    assert len(standin.tweets()) == 1 and posts(data).get(photo, "twitter") is None
    out = crosspost(photo, OWNER, "twitter", "harbour")
    assert (out.status, out.post_id) == ("reconciled", "")
    assert len(standin.tweets()) == 1
    assert [r.status for r in standin.requests("twitter")] == [200, 201, 200, 403]
    record = posts(data).get(photo, "twitter")
    assert record is not None and (record["status"], record["how"]) == ("posted", "duplicate")
    assert crosspost(photo, OWNER, "twitter", "harbour").status == "already posted"
    assert len(standin.requests("twitter")) == 4


@pytest.mark.parametrize("network", ["twitter", "facebook"])
def test_no_linked_account_is_skipped_and_recorded(standin: SocialStandIn, data: redis.Redis,
                                                   network: str) -> None:
    photo = new_photo_id()
    store_full(photo)
    out = crosspost(photo, OWNER, network, "hello")
    assert out.status == "skipped" and f"no linked {network} account" in out.reason
    record = posts(data).get(photo, network)
    assert record is not None and record["status"] == "skipped"
    assert 0 < data.ttl(posts(data).record_key(photo, network)) <= get_settings().marker_ttl
    assert standin.requests() == []
    # Linked later (and the message replayed): the skip does not stand in the way.
    LinkedAccounts(data, get_settings()).link_facebook(OWNER, *standin.add_page("later"))
    if network == "facebook":
        assert crosspost(photo, OWNER, network, "hello").status == "posted"


def test_an_account_unlinked_after_the_upload_says_why_it_was_skipped(
        standin: SocialStandIn, linked: dict[str, Account], data: redis.Redis) -> None:
    photo = new_photo_id()
    store_full(photo)
    LinkedAccounts(data, get_settings()).unlink(OWNER, "twitter")
    out = crosspost(photo, OWNER, "twitter")
    assert out.status == "skipped" and "unlinked by the user" in out.reason


def test_a_deleted_photo_is_skipped(standin: SocialStandIn, linked: dict[str, Account],
                                    data: redis.Redis) -> None:
    photo = new_photo_id()
    store_full(photo)
    data.set(f"farm:deleted:{photo}", "1")
    assert crosspost(photo, OWNER, "twitter").status == "skipped"
    assert standin.requests() == []


def test_a_photo_without_its_full_variant_fails_for_good(
        standin: SocialStandIn, linked: dict[str, Account], data: redis.Redis) -> None:
    photo = new_photo_id()  # never processed
    with pytest.raises(PermanentError, match=f"photo {photo} has no full variant"):
        crosspost(photo, OWNER, "twitter")
    assert standin.requests() == []
    assert posts(data).get(photo, "twitter") is None


@pytest.mark.parametrize("which", ["account", "app"])
def test_over_a_farm_wide_limit_waits_without_a_request(
        standin: SocialStandIn, linked: dict[str, Account], configure: Configure,
        data: redis.Redis, which: str) -> None:
    configure(**{f"FARM_TWITTER_{which.upper()}_LIMIT": "2/hour"})
    photos = [new_photo_id() for _ in range(3)]
    for photo in photos:
        store_full(photo)
    crosspost(photos[0], OWNER, "twitter")
    crosspost(photos[1], OWNER, "twitter")
    seen = len(standin.requests())
    with pytest.raises(RateLimited) as raised:
        crosspost(photos[2], OWNER, "twitter")
    assert 3500 < (raised.value.retry_after or 0) <= 3601 + 1
    assert len(standin.requests()) == seen  # no request made
    assert posts(data).pending(photos[2], "twitter") is None
    assert len(standin.tweets()) == 2


def test_a_pause_a_server_asked_for_holds_every_post_of_that_account(
        standin: SocialStandIn, linked: dict[str, Account]) -> None:
    photo = new_photo_id()
    store_full(photo)
    RateLimits(get_settings()).pause(("facebook", "account", str(OWNER)), 30)
    with pytest.raises(RateLimited) as raised:
        crosspost(photo, OWNER, "facebook")
    assert 28 < (raised.value.retry_after or 0) <= 31 + 1
    assert standin.requests() == []
    assert crosspost(photo, OWNER, "twitter").status == "posted"  # another network: unaffected


def test_two_runs_at_once_do_not_both_post(standin: SocialStandIn, linked: dict[str, Account],
                                           data: redis.Redis) -> None:
    photo = new_photo_id()
    store_full(photo)
    data.set(posts(data).lock_key(photo, "facebook"), "host:1:abc", px=5000)  # another run's
    with pytest.raises(TransientError, match="another attempt"):
        crosspost(photo, OWNER, "facebook")
    assert standin.requests() == []


def test_captions_are_fitted_end_to_end(standin: SocialStandIn, linked: dict[str, Account]
                                        ) -> None:
    photo = new_photo_id()
    store_full(photo)
    caption = "港の夕焼け🌅👨‍👩‍👧 " * 60  # CJK and emoji: far over X's 280
    crosspost(photo, OWNER, "twitter", caption)
    crosspost(photo, OWNER, "facebook", caption)
    link = link_for(photo, get_settings())
    (tweet,) = standin.tweets()
    assert tweet.text == tweet_text(caption, link) and tweet.text.endswith(f"… {link}")
    assert weighted_length(tweet.text[: -len(link) - 1]) + 1 + 23 <= 280
    assert "\u200d👧" not in tweet.text.replace("👩\u200d👧", "")  # no family cut in half
    (photo_post,) = standin.page_photos()
    assert photo_post.message == f"{caption.strip()}\n\n{link}"  # Facebook: all of it

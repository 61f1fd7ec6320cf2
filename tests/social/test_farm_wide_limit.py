"""Three real io worker processes (threads pools) posting twelve photos for one X account share one
farm-wide account limit (FARM_TWITTER_ACCOUNT_LIMIT, kept in the data Redis): the stand-in
receives each photo once, never more than the limit within its window, and the posts over the
limit wait their turn (rate-limit retries) instead of failing."""

from __future__ import annotations

import pytest
import redis

from config.celery_app import app
from config.settings import get_settings
from tasks.core import metrics
from tasks.core.deadletter import DeadLetterStore
from tasks.social.accounts import LinkedAccounts
from tasks.social.captions import link_for
from tasks.social.posts import PostRecords
from tests.social.conftest import new_photo_id, store_full
from tests.support.workers import WorkerFactory, wait_for
from workers.demo_social import SocialStandIn

pytestmark = pytest.mark.integration

OWNER = 42
PHOTOS = 12
RATE, WINDOW = 4, 3.0  # FARM_TWITTER_ACCOUNT_LIMIT
# A tweet reaches the stand-in a moment after its slot was taken (the upload comes first), and
# that moment varies from post to post: windows are checked this much shorter than the limit's.
LATENCY_MARGIN = 1.0


def test_three_workers_hold_one_account_to_the_farm_wide_limit(
        standin: SocialStandIn, data: redis.Redis, workers: WorkerFactory) -> None:
    s = get_settings()
    LinkedAccounts(data, s).link_twitter(OWNER, *standin.add_x_user("anna"), handle="anna")
    photos = [new_photo_id() for _ in range(PHOTOS)]
    for photo in photos:
        store_full(photo)
    env = {**standin.env(), "FARM_TWITTER_ACCOUNT_LIMIT": f"{RATE}/{WINDOW:.0f}second"}
    started = [workers("io", env=env, concurrency=4, node=f"io-limit-{i}", ready=False)
               for i in range(3)]
    for worker in started:  # started together, then each waited for
        worker.wait_ready(60)

    for photo in photos:
        app.send_task("social.crosspost", kwargs={"photo_id": photo, "owner_id": OWNER,
                                                  "network": "twitter", "caption": "limited"},
                      queue="social")
    wait_for(lambda: len(standin.tweets()) >= PHOTOS, timeout=90,
             what=f"{PHOTOS} tweets at the stand-in")
    wait_for(lambda: metrics.read(data, s).get("social.crosspost", {}).get("ok") == PHOTOS,
             timeout=30, what="every task to finish")

    tweets = standin.tweets()
    assert len(tweets) == PHOTOS
    assert sorted(t.text for t in tweets) == sorted(
        f"limited {link_for(photo, s)}" for photo in photos)  # each photo once
    times = sorted(t.at for t in tweets)
    checked = WINDOW - LATENCY_MARGIN
    for i, t in enumerate(times):
        within = sum(1 for u in times[i:] if u < t + checked)
        assert within <= RATE, f"{within} tweets within {checked}s from {t:.3f}: {times}"
    # Twelve slots, at most RATE per window: the ninth is at least two windows after the first.
    assert times[-1] - times[0] >= (PHOTOS // RATE - 1) * WINDOW - LATENCY_MARGIN, times

    # The posts over the limit waited (rate-limit retries, not failures), and nothing was lost.
    def rate_limit_retries() -> int | None:
        """The task's retries, once each is counted as a rate-limit wait (the base task counts
        those apart, under the task's id); None until then."""
        retries = int(metrics.read(data, s)["social.crosspost"]["retry"])
        waits = sum(int(data.get(key) or 0) for key in data.scan_iter(s.key("ratelimited", "*")))
        return retries if retries == waits else None

    wait_for(lambda: rate_limit_retries() is not None, timeout=10,
             what="every retry to be counted as a rate-limit wait")
    retries = rate_limit_retries()
    assert retries is not None and retries >= 1  # twelve sent at once: most had to wait
    assert DeadLetterStore(data, s).count() == 0
    records = PostRecords(data, s)
    for photo in photos:
        record = records.get(photo, "twitter")
        assert record is not None and (record["status"], record["how"]) == ("posted", "posted")
        assert records.pending(photo, "twitter") is None
    assert all(r.status in (200, 201) for r in standin.requests("twitter"))

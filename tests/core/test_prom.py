"""The farm's Prometheus metrics in one process (in memory: no PROMETHEUS_MULTIPROC_DIR here):
bounded labels, and the domains' counters where their outcome is known."""

from __future__ import annotations

import pytest
import redis

from config.settings import get_settings
from tasks.blobs import open_store
from tasks.core import prom
from tests.support import corpus


def value(name: str, **labels: str) -> float:
    return prom.metrics().registry.get_sample_value(name, labels) or 0.0


@pytest.mark.parametrize(("message", "reason"), [
    ("empty file (0 bytes)", "empty"),
    ("not an image in an accepted format (JPEG, PNG, ...)", "not_an_image"),
    ("image is 20000x20000 (400000000 pixels), over the FARM_MAX_PIXELS limit", "too_large"),
    ("file is 80.0 MiB, over the FARM_MAX_UPLOAD_MB limit", "too_large"),
    ("unsupported JPEG colour mode P", "unsupported"),
    ("truncated or corrupt image data: scans missing", "corrupt"),
    ("corrupt image header: bad marker", "corrupt"),
    ("something nobody wrote yet \x1b[31m", "other"),
])
def test_refusals_are_counted_under_a_fixed_set_of_reasons(message: str, reason: str) -> None:
    assert prom.refusal_reason(message) == reason
    before = value("farm_photos_refused_total", reason=reason)
    prom.photo_refused(message)
    assert value("farm_photos_refused_total", reason=reason) == before + 1


def test_free_text_from_outside_never_becomes_a_label() -> None:
    before = value("farm_pushes_failed_total", reason="other")
    prom.pushes(0, 0, {"HTTP 502": 2, "a reason a stand-in made up": 1, "BadDeviceToken": 1})
    assert value("farm_pushes_failed_total", reason="other") == before + 3
    prom.crosspost("myspace", "already posted")
    assert value("farm_crossposts_total", network="other", outcome="already_posted") >= 1
    prom.webhook_delivery("exploded")
    assert value("farm_webhook_deliveries_total", outcome="other") >= 1
    prom.dead_lettered("diag.flaky", "because")
    assert value("farm_task_dead_lettered_total", task="diag.flaky", reason="other") >= 1
    prom.message_dead_lettered("bad protocol")
    assert value("farm_messages_dead_lettered_total", reason="bad_protocol") >= 1
    prom.message_dead_lettered("<script>")
    assert value("farm_messages_dead_lettered_total", reason="other") >= 1
    # Every label value ever seen is from the fixed sets (or "other").
    allowed = (prom.REFUSAL_REASONS | prom.PUSH_REASONS | prom.CROSSPOST_NETWORKS
               | prom.CROSSPOST_OUTCOMES | prom.WEBHOOK_OUTCOMES | prom.DEADLETTER_REASONS
               | prom.MESSAGE_REASONS | {"other"})
    for family in prom.metrics().registry.collect():
        for sample in family.samples:
            for label, seen in sample.labels.items():
                if label in ("reason", "network", "outcome"):
                    assert seen in allowed, (sample.name, label, seen)


def test_known_reasons_exist_at_zero_before_the_first_event() -> None:
    """So rate() has a series from the start and the dashboard finds every one."""
    for reason in prom.REFUSAL_REASONS:
        assert prom.metrics().registry.get_sample_value(
            "farm_photos_refused_total", {"reason": reason}) is not None
    assert prom.metrics().registry.get_sample_value(
        "farm_webhook_deliveries_total", {"outcome": "sent"}) is not None


def test_a_photo_processed_and_one_refused_are_counted_by_the_pipeline(
        data: redis.Redis) -> None:
    from tasks.core.errors import PermanentError
    from tasks.photos.pipeline import process_photo

    store = open_store(get_settings())
    store.put("originals/prom-ok.jpg", corpus.large_photo(), content_type="image/jpeg")
    store.put("originals/prom-empty.jpg", b"", content_type="image/jpeg")
    processed = value("farm_photos_processed_total")
    empty = value("farm_photos_refused_total", reason="empty")
    assert process_photo(701, 7, "originals/prom-ok.jpg").status == "ready"
    with pytest.raises(PermanentError):
        process_photo(702, 7, "originals/prom-empty.jpg")
    assert value("farm_photos_processed_total") == processed + 1
    assert value("farm_photos_refused_total", reason="empty") == empty + 1


def test_fan_out_counts_the_feed_entries_it_wrote(data: redis.Redis) -> None:
    from tasks.feeds.fanout import write_chunk
    from tasks.feeds.store import feed_store

    store = feed_store()
    for follower in (11, 12, 13):
        store.follow(follower, 10)  # none active lately: the inactive pass writes them
    before = value("farm_fanout_followers_written_total")
    assert write_chunk(900, 10, 0, 2**53, False) == 3
    assert value("farm_fanout_followers_written_total") == before + 3
    assert write_chunk(900, 10, 0, 2**53, False) == -1  # ran already: nothing more counted
    assert value("farm_fanout_followers_written_total") == before + 3

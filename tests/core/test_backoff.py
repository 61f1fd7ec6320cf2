"""Retry delays: full jitter inside an exponential ceiling, Retry-After as a floor, a cap."""

from __future__ import annotations

from datetime import UTC, datetime

from tasks.core.backoff import parse_retry_after, retry_delay


def test_full_jitter_spans_zero_to_the_exponential_ceiling() -> None:
    assert retry_delay(0, 2.0, 900, rand=lambda: 0.0) == 0.0
    assert retry_delay(0, 2.0, 900, rand=lambda: 0.999999) < 2.0
    assert 63.9 < retry_delay(5, 2.0, 900, rand=lambda: 0.999999) < 64.0
    assert retry_delay(40, 2.0, 900, rand=lambda: 0.999999) < 900


def test_retry_after_is_a_floor_with_a_little_jitter() -> None:
    assert retry_delay(0, 2.0, 900, retry_after=30, rand=lambda: 0.0) == 30
    assert 30 < retry_delay(0, 2.0, 900, retry_after=30, rand=lambda: 0.5) <= 32


def test_nothing_waits_beyond_the_cap() -> None:
    assert retry_delay(0, 2.0, 60, retry_after=3600, rand=lambda: 0.5) == 60


def test_parse_retry_after_seconds_and_dates() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("120") == 120
    assert parse_retry_after("Thu, 01 Jan 2026 12:00:30 GMT", now=now) == 30
    assert parse_retry_after("Thu, 01 Jan 2026 11:00:00 GMT", now=now) == 0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None

"""push.notify's work: one notification to every registered device of some users.

Apple's reasons decide each device's fate (DESIGN, "Push"):
- 200: sent; a sent-marker per (notification, device) means a redelivered or retried task never
  pushes to that device again;
- 410 Unregistered (when Apple's timestamp is newer than the registration), BadDeviceToken,
  DeviceTokenNotForTopic: the token is removed from the registry;
- 429, 5xx, no answer: retried with backoff, only those devices (the markers skip the rest);
- ExpiredProviderToken: the farm's token is re-signed once and those devices sent again; still
  expired, or the token too young to re-sign (FARM_APNS_MIN_RESIGN_AGE), they are retried later;
- anything else (PayloadTooLarge, TopicDisallowed, ...): a permanent failure, dead-lettered.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from config.settings import get_settings
from tasks.core import metrics, timing
from tasks.core.errors import PermanentError, TransientError
from tasks.core.redis import data_redis
from tasks.push.devices import Device, DeviceRegistry
from tasks.push.payload import build_payload, push_type

log = logging.getLogger("farm.push")

PRUNE_REASONS = {"BadDeviceToken", "DeviceTokenNotForTopic"}  # 410 Unregistered: by timestamp
RETRY_STATUSES = {0, 429, 500, 502, 503, 504}


@dataclass
class Outcome:
    sent: int = 0
    skipped: int = 0  # already sent (a redelivery or a retry)
    pruned: int = 0
    failed: Counter[str] = field(default_factory=Counter)  # reason -> devices
    retry: list[str] = field(default_factory=list)  # reasons of the devices to retry
    retry_after: float | None = None
    note: str = ""  # why some retries cannot be helped now (a token too young to re-sign)


def notify(user_ids: list[int], alert: str | None, notification_id: str, *,
           badge: int | None = None, sound: str | None = None,
           data: Mapping[str, Any] | None = None, content_available: bool = False,
           priority: int | None = None, expiration: int | None = None,
           collapse_id: str | None = None) -> Outcome:
    """Send, apply Apple's reasons, count; TransientError if some devices must be retried,
    PermanentError if some failed for good (after the rest were sent)."""
    from tasks.push.apns.apps import AppConfigError, get_app
    from tasks.push.apns.client import PushRequest

    s = get_settings()
    r = data_redis()
    registry = DeviceRegistry(r, s)
    payload = build_payload(alert, badge=badge, sound=sound, content_available=content_available,
                            data=data)  # PayloadTooLarge: permanent, before anything is sent
    out = Outcome()
    with timing.phase("devices"):
        devices = _unsent(r, s.key("push", "sent", notification_id), registry.devices(user_ids))
    out.skipped = devices[1]
    by_app: dict[str, list[Device]] = defaultdict(list)
    for d in devices[0]:
        by_app[d.app_id].append(d)
    kind = push_type(alert, content_available)
    for app_id, group in by_app.items():
        try:
            app = get_app(app_id)
        except AppConfigError as exc:
            log.warning("push: %s; %d device(s) skipped", exc, len(group))
            out.failed["UnknownApp"] += len(group)
            continue
        requests = [PushRequest(d.token, payload, kind, priority, expiration, collapse_id)
                    for d in group]
        with timing.phase("send"):
            results = _send_with_fresh_token(app, requests, out)
        _apply(out, registry, r, s.key("push", "sent", notification_id), app_id, group, results,
               s.marker_ttl)
    _count(out)
    if out.retry:
        raise TransientError(f"{len(out.retry)} device(s) to retry: "
                             f"{_summary(Counter(out.retry))}"
                             + (f" ({out.note})" if out.note else ""),
                             retry_after=out.retry_after)
    if out.failed:
        raise PermanentError(f"{sum(out.failed.values())} device(s) failed: "
                             f"{_summary(out.failed)}")
    return out


def _unsent(r: Any, marker_prefix: str, devices: list[Device]) -> tuple[list[Device], int]:
    if not devices:
        return [], 0
    seen = r.mget([f"{marker_prefix}:{d.app_id}:{d.token}" for d in devices])
    todo = [d for d, mark in zip(devices, seen, strict=True) if not mark]
    return todo, len(devices) - len(todo)


def _send_with_fresh_token(app: Any, requests: list[Any], out: Outcome) -> list[Any]:
    """Send; devices refused with ExpiredProviderToken go again, once, with a re-signed token
    (re-signed once farm-wide, however many workers saw the expiry). If the token is too young
    to re-sign, those devices keep their answer and are retried later."""
    from tasks.push.apns import client
    from tasks.push.apns.token import get_token, resign

    token = get_token(app)
    results = client.send_many(app, requests, token=token)
    expired = [i for i, res in enumerate(results) if res.reason == "ExpiredProviderToken"]
    if expired:
        try:
            fresh = resign(app, token)
        except TransientError as exc:
            out.retry_after = max(out.retry_after or 0.0, exc.retry_after or 0.0) or None
            out.note = str(exc)
            return results
        again = client.send_many(app, [requests[i] for i in expired], token=fresh)
        for i, res in zip(expired, again, strict=True):
            results[i] = res
    return results


def _apply(out: Outcome, registry: DeviceRegistry, r: Any, marker_prefix: str, app_id: str,
           group: list[Device], results: list[Any], ttl: int) -> None:
    pipe = r.pipeline(transaction=False)
    for device, res in zip(group, results, strict=True):
        if res.ok:
            out.sent += 1
            pipe.set(f"{marker_prefix}:{app_id}:{device.token}", 1, ex=ttl)
        elif res.status == 410 and res.reason == "Unregistered":
            since = res.timestamp / 1000 if res.timestamp else None
            out.pruned += registry.prune(app_id, device.token, invalid_since=since)
        elif res.reason in PRUNE_REASONS:
            out.pruned += registry.prune(app_id, device.token)
        elif res.status in RETRY_STATUSES or res.reason == "ExpiredProviderToken":
            out.retry.append(res.reason or res.error or f"HTTP {res.status}")
            if res.retry_after:
                out.retry_after = max(out.retry_after or 0.0, res.retry_after)
        else:
            out.failed[res.reason or f"HTTP {res.status}"] += 1
    pipe.execute()


def _count(out: Outcome) -> None:
    s, r = get_settings(), data_redis()
    if out.sent:
        metrics.incr(r, s, "push.sent", out.sent)
    if out.pruned:
        metrics.incr(r, s, "push.pruned", out.pruned)
    for reason, n in (Counter(out.retry) + out.failed).items():
        metrics.incr(r, s, f"push.failed.{reason}", n)
    log.info("push: sent=%d skipped=%d pruned=%d retry=%d failed=%s", out.sent, out.skipped,
             out.pruned, len(out.retry), dict(out.failed) or "-")


def _summary(reasons: Counter[str]) -> str:
    return ", ".join(f"{reason} x{n}" for reason, n in reasons.most_common())

"""push.notify's work: one notification to every registered device of some users.

Apple's reasons decide each device's fate (DESIGN, "Push"):
- 200: sent. Its sent-marker per (notification, device) is written as the 200 arrives (the
  client hands answers over as they come; each batch is one script call, mark_sent.lua), so a
  redelivered or retried task skips every device that was answered, even if the worker died
  mid-batch;
- 410 Unregistered (when Apple's timestamp is newer than the registration), BadDeviceToken,
  DeviceTokenNotForTopic: the token is removed from the registry;
- 429, 5xx, no answer: retried with backoff, only those devices (the markers skip the rest);
- no answer after the request left (a late stream, a reset, the connection lost): the outcome is
  unknown, Apple may have delivered it. Never resent within the attempt; the task is retried with
  backoff like a 5xx, and the retry sends those devices once more: with the same
  apns-collapse-id, so if the first did arrive the second replaces it on the device instead of
  stacking a second notification;
- ExpiredProviderToken: the farm's token is re-signed once and those devices sent again; still
  expired, or the token too young to re-sign (FARM_APNS_MIN_RESIGN_AGE), they are retried later;
- anything else (PayloadTooLarge, TopicDisallowed, ...): a permanent failure, dead-lettered.

Every push carries apns-collapse-id: the notification's own, or else its notification_id. A
duplicate is left possible only for a worker killed between Apple's 200 and its marker being
acknowledged by the data Redis (the 200 still on the wire, or in this process: ``Outcome.windows``
measures that part, a few ms), and for unknown outcomes; there the collapse id makes the
duplicate replace the first on the device.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from config.settings import get_settings
from tasks.core import metrics, prom, timing
from tasks.core.errors import PermanentError, TransientError
from tasks.core.redis import data_redis
from tasks.core.scripts import Script
from tasks.push.devices import Device, DeviceRegistry
from tasks.push.payload import build_payload, push_type

if TYPE_CHECKING:
    from tasks.push.apns.apps import App
    from tasks.push.apns.client import Completed, PushRequest

log = logging.getLogger("farm.push")

PRUNE_REASONS = {"BadDeviceToken", "DeviceTokenNotForTopic"}  # 410 Unregistered: by timestamp
RETRY_STATUSES = {0, 429, 500, 502, 503, 504}
MAX_COLLAPSE_ID = 64  # bytes (Apple)
MARK_SENT = Script(__package__, "mark_sent.lua")
MARK_AT_ONCE = 1000  # markers per script call: Redis is held well under a millisecond


@dataclass
class Outcome:
    sent: int = 0
    skipped: int = 0  # already sent (a redelivery or a retry)
    pruned: int = 0
    unknown: int = 0  # sent, no answer: maybe delivered (retried, under the same collapse id)
    failed: Counter[str] = field(default_factory=Counter)  # reason -> devices
    retry: list[str] = field(default_factory=list)  # reasons of the devices to retry
    retry_after: float | None = None
    note: str = ""  # why some retries cannot be helped now (a token too young to re-sign)
    # The duplicate window, per batch of answers: (seconds from the first 200 of the batch being
    # complete in this process to its markers acknowledged by Redis, how many 200s).
    windows: list[tuple[float, int]] = field(default_factory=list)


def collapse_id_for(notification_id: str, collapse_id: str | None) -> str:
    """The notification's apns-collapse-id, else its id (at most 64 bytes: Apple's limit; the
    task's ids are 1-64 letters, digits, '-' or '_', anything longer is hashed)."""
    if collapse_id:
        return collapse_id
    if len(notification_id.encode()) <= MAX_COLLAPSE_ID:
        return notification_id
    return hashlib.sha256(notification_id.encode()).hexdigest()


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
    collapse = collapse_id_for(notification_id, collapse_id)
    marker_prefix = s.key("push", "sent", notification_id)
    out = Outcome()
    with timing.phase("devices"):
        devices = _unsent(r, marker_prefix, registry.devices(user_ids))
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
        requests = [PushRequest(d.token, payload, kind, priority, expiration, collapse)
                    for d in group]
        with timing.phase("send"):
            _Sender(out, registry, r, f"{marker_prefix}:{app_id}:", app_id,
                    s.marker_ttl).send(app, requests)
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


class _Sender:
    """One app's devices: answers applied as they arrive, each batch's sent-markers written in
    one script call (mark_sent.lua) before anything else is done with the batch."""

    def __init__(self, out: Outcome, registry: DeviceRegistry, r: Any, marker: str, app_id: str,
                 ttl: int) -> None:
        self.out, self.registry, self.r, self.marker = out, registry, r, marker
        self.app_id, self.ttl = app_id, ttl

    def send(self, app: App, requests: list[PushRequest]) -> None:
        """Send; devices refused with ExpiredProviderToken go again, once, with a re-signed
        token (re-signed once farm-wide, however many workers saw the expiry). If the token is
        too young to re-sign, those devices are retried later."""
        from tasks.push.apns import client
        from tasks.push.apns.token import get_token, resign

        token = get_token(app)
        expired = self.apply(client.as_completed(app, requests, token=token), requests,
                             expired_again=False)
        if not expired:
            return
        try:
            fresh = resign(app, token)
        except TransientError as exc:
            out = self.out
            out.retry_after = max(out.retry_after or 0.0, exc.retry_after or 0.0) or None
            out.note = str(exc)
            out.retry += ["ExpiredProviderToken"] * len(expired)
            return
        again = [requests[i] for i in expired]
        self.apply(client.as_completed(app, again, token=fresh), again, expired_again=True)

    def apply(self, batches: Iterable[Completed], requests: list[PushRequest], *,
              expired_again: bool) -> list[int]:
        """Apply each batch of answers as it comes; the indices answered ExpiredProviderToken
        (left for the caller unless ``expired_again``: then they are retried later)."""
        out, expired = self.out, []
        for batch in batches:
            # The markers first, before anything else: they are what a redelivery reads.
            sent = [self.marker + requests[i].device_token for i, res in batch.results if res.ok]
            for start in range(0, len(sent), MARK_AT_ONCE):
                MARK_SENT(self.r, sent[start:start + MARK_AT_ONCE], [self.ttl])
            if sent:
                out.windows.append((time.monotonic() - batch.arrived, len(sent)))
                out.sent += len(sent)
            prune: list[tuple[str, float | None]] = []
            for i, res in batch.results:
                if res.ok:
                    continue
                if res.reason == "ExpiredProviderToken" and not expired_again:
                    expired.append(i)
                elif res.status == 410 and res.reason == "Unregistered":
                    prune.append((res.device_token, res.timestamp / 1000 if res.timestamp
                                  else None))
                elif res.reason in PRUNE_REASONS:
                    prune.append((res.device_token, None))
                elif res.status in RETRY_STATUSES or res.reason == "ExpiredProviderToken":
                    out.unknown += res.unknown
                    out.retry.append(res.reason or res.error or f"HTTP {res.status}")
                    if res.retry_after:
                        out.retry_after = max(out.retry_after or 0.0, res.retry_after)
                else:
                    out.failed[res.reason or f"HTTP {res.status}"] += 1
            for token, since in prune:
                out.pruned += self.registry.prune(self.app_id, token, invalid_since=since)
        return expired


def _count(out: Outcome) -> None:
    s, r = get_settings(), data_redis()
    if out.sent:
        metrics.incr(r, s, "push.sent", out.sent)
    if out.pruned:
        metrics.incr(r, s, "push.pruned", out.pruned)
    if out.unknown:
        metrics.incr(r, s, "push.unknown", out.unknown)
    for reason, n in (Counter(out.retry) + out.failed).items():
        metrics.incr(r, s, f"push.failed.{reason}", n)
    prom.pushes(out.sent, out.pruned, Counter(out.retry) + out.failed)
    window = max((w for w, _ in out.windows), default=0.0)
    log.info("push: sent=%d skipped=%d pruned=%d retry=%d unknown=%d failed=%s "
             "mark_window_max=%.1fms", out.sent, out.skipped, out.pruned, len(out.retry),
             out.unknown, dict(out.failed) or "-", window * 1000)


def _summary(reasons: Counter[str]) -> str:
    return ", ".join(f"{reason} x{n}" for reason, n in reasons.most_common())

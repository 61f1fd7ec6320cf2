"""webhooks.deliver and webhooks.replay's work: a new photo to every subscriber it matches, and a
subscriber's missed events again.
Long because deliver and replay share the event log, the signing and the pause bookkeeping.

For each subscription the photo matches (its owner's, or a hashtag of its caption):

- the event goes into the subscription's event log first (a sorted set by time, trimmed to
  FARM_WEBHOOK_LOG_DAYS and MAX_LOG_EVENTS), delivered or not, paused or not: the log is what a
  replay reads. Logging is idempotent (ZADD NX: a retry keeps the first time, so the body, whose
  timestamp is the event's, is the same on every attempt). Matching, logging and reading the
  delivered-markers are one script call (match.lua) whatever the number of subscribers;
- a paused subscription gets nothing more. Active ones are sent to concurrently, at most
  FARM_WEBHOOK_CONCURRENCY at once on the process's shared sending threads (made once, not per
  task), each a signed POST through the SSRF guard (guard.py);
- a 2xx writes the (subscription, photo) delivered-marker and ends the subscription's run of
  failures, in one script call (state.lua). A retried or redelivered task, and a replay, skip
  what has a marker. Delivery is at least once: a worker dying between the 2xx and the marker
  sends that one again, with the same webhook-id, which the receiver dedupes on;
- a failure (no connection, a timeout, a non-2xx answer, a redirect, which is never followed)
  counts one more failure in a row; FARM_WEBHOOK_PAUSE_AFTER in a row pause the subscription,
  with the reason, and it is not retried further. If active subscriptions failed and are not
  now paused, the task raises TransientError naming how many: the task base retries it with
  backoff, and the markers make the retry send only to those;
- an address the guard refuses at send time (the callback's name now resolves somewhere
  private) counts as a failure too, but is permanent for that photo: a "refused" marker keeps
  retries of this task from trying again (a replay, after the operator has looked, does);
- each subscription has a farm-wide rate limit (FARM_WEBHOOK_RATE_LIMIT, through RateLimits in
  the data Redis); over it, that subscription waits: if some wait and none failed, the task
  raises RateLimited, which waits without using up retries.

A replay sends a subscription's logged events from a time on that have no delivered-marker, one
at a time in time order (a subscriber catching up wants them in order), with the same ids and
bodies as the first time and the same failure accounting; it stops at the first failure (the
task retries from there). A run sends at most REPLAY_CHUNK events or for REPLAY_RUN_SECONDS,
then queues the rest as a new replay, so no task runs near its time limit. A paused subscription
replays nothing: `farm webhooks resume` resumes it and queues the replay of what it missed.
"""

from __future__ import annotations

import email.utils
import logging
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, as_completed, wait
from dataclasses import dataclass, field
from typing import Any, cast

import redis

from config.settings import Settings, get_settings
from tasks.core import metrics, prom, publish, timing
from tasks.core.errors import PermanentError, RateLimited, TransientError
from tasks.core.process_local import ProcessLocal
from tasks.core.ratelimit import Limit, RateLimits
from tasks.core.redis import data_redis
from tasks.core.scripts import Script
from tasks.core.sealed import SealedUnreadable
from tasks.webhooks import guard, signing
from tasks.webhooks.signing import Event
from tasks.webhooks.subscriptions import STATE, Subscription, Subscriptions, caption_tags

log = logging.getLogger("farm.webhooks")

# A subscriber's event log keeps its newest events up to this many (and none older than
# FARM_WEBHOOK_LOG_DAYS): a week at one post a minute, about 1 MB of Redis for a full log.
MAX_LOG_EVENTS = 10_000
REPLAY_CHUNK = 500  # events one replay run sends before queueing the rest as a new replay
REPLAY_RUN_SECONDS = 60.0  # ... or seconds it sends for: well inside FARM_TASK_SOFT_TIME_LIMIT
MAX_RETRY_AFTER = 3600.0  # a subscriber's Retry-After beyond an hour is an outage: backoff's job
MARKERS_AT_ONCE = 1000  # markers read per MGET in a replay
DELIVERED = "1"  # marker values: a 2xx; an address refused at send time (deliver only)
REFUSED = "refused"

MATCH = Script(__package__, "match.lua")
_pools: ProcessLocal[int, ThreadPoolExecutor] = ProcessLocal("webhook senders")


@dataclass(frozen=True)
class Result:
    """What happened to one event for one subscription."""

    kind: str  # sent | wait | failed | paused (failed, and that paused it) | refused | unreadable
    reason: str = ""
    retry_after: float | None = None


@dataclass
class Outcome:
    matched: int = 0
    sent: int = 0
    skipped: int = 0  # already delivered (a retry, a redelivery, a replay)
    held: int = 0  # paused subscriptions: logged, not sent
    waiting: int = 0  # over their rate limit
    refused: int = 0  # the guard refused the address at send time
    paused: list[int] = field(default_factory=list)  # subscriptions this run paused
    failed: dict[int, str] = field(default_factory=dict)  # subscription -> why (to retry)
    unreadable: list[int] = field(default_factory=list)  # secrets no key opens
    retry_after: float | None = None
    queued: str | None = None  # a replay's continuation, its task id


def marker_ttl(s: Settings) -> int:
    """Delivered-markers outlive the log (a replay reaches no further back) and dead letters (a
    replayed dead letter must still find them)."""
    return max(s.marker_ttl, int(s.webhook_log_days * 86400) + 86400)


def deliver(photo_id: int, owner_id: int, caption: str = "") -> Outcome:
    """The photo to every subscription it matches; see the module docstring for what raises."""
    s, r = get_settings(), data_redis()
    subs = Subscriptions(r, s)
    out = Outcome()
    with timing.phase("match"):
        found = _match_and_log(r, s, subs, photo_id, owner_id, caption)
    out.matched = len(found)
    todo: list[tuple[Subscription, Event]] = []
    for sub, event, mark in found:
        if mark:
            out.skipped += 1
        elif not sub.active:
            out.held += 1
        else:
            todo.append((sub, event))
    with timing.phase("send"):
        results = _send_all(todo, s, r)
    for (sub, _), result in zip(todo, results, strict=True):
        _tally(out, sub.id, result)
    _report(r, s, f"photo={photo_id}", out)
    if out.failed:
        raise TransientError(f"{len(out.failed)} of {len(todo)} subscriber(s) to retry: "
                             f"{_summary(out.failed)}", retry_after=out.retry_after)
    if out.waiting:
        raise RateLimited(f"{out.waiting} subscriber(s) over FARM_WEBHOOK_RATE_LIMIT",
                          retry_after=out.retry_after)
    if out.unreadable:
        raise SealedUnreadable(f"subscription(s) {', '.join(map(str, out.unreadable))}: the "
                               "signing secret is unreadable with FARM_TOKEN_KEYS")
    return out


def replay(subscription_id: int, since: float) -> Outcome:
    """The subscription's logged events from ``since`` on that were not delivered, in time order.
    UnknownSubscription (permanent) for an unknown id; nothing for a paused one."""
    s, r = get_settings(), data_redis()
    subs = Subscriptions(r, s)
    sub = subs.get(subscription_id)
    out = Outcome(matched=1)
    if not sub.active:
        log.warning("webhooks: replay of subscription %d skipped: it is paused (%s); resume it "
                    "first (`farm webhooks resume %d` queues the replay)", sub.id,
                    sub.paused_reason or "-", sub.id)
        out.held = 1
        return out
    with timing.phase("log"):
        rows = cast("list[tuple[str, float]]", r.zrangebyscore(
            subs.log_key(sub.id), since, "+inf", withscores=True))
        events = [_event(sub, member, at) for member, at in rows]
        marks: list[str | None] = []
        for start in range(0, len(events), MARKERS_AT_ONCE):
            chunk = events[start:start + MARKERS_AT_ONCE]
            marks += cast("list[str | None]", r.mget(
                [subs.marker_key(sub.id, e.photo_id) for e in chunk]))
    todo = [e for e, mark in zip(events, marks, strict=True) if mark != DELIVERED]
    out.skipped = len(events) - len(todo)
    started = time.monotonic()
    last = Result("sent")
    with timing.phase("send"):
        for i, event in enumerate(todo):
            if i >= REPLAY_CHUNK or time.monotonic() - started > REPLAY_RUN_SECONDS:
                out.queued = queue_replay(sub.id, event.at)
                log.info("webhooks: replay of subscription %d continues from %.3f as %s",
                         sub.id, event.at, out.queued)
                break
            last = send(sub, event, s, r)
            _tally(out, sub.id, last)
            if last.kind != "sent":
                break
    _report(r, s, f"replay={sub.id}", out)
    if out.unreadable:
        raise SealedUnreadable(f"subscription {sub.id}: the signing secret is unreadable with "
                               "FARM_TOKEN_KEYS")
    if out.refused:
        raise PermanentError(f"replay of subscription {sub.id}: {last.reason}")
    if out.failed:
        raise TransientError(f"replay of subscription {sub.id}: {_summary(out.failed)}",
                             retry_after=out.retry_after)
    if out.waiting:
        raise RateLimited(f"replay of subscription {sub.id}: over FARM_WEBHOOK_RATE_LIMIT",
                          retry_after=out.retry_after)
    return out


def queue_replay(subscription_id: int, since: float) -> str:
    """Queue webhooks.replay (on webhooks_batch); its task id."""
    return publish.send("webhooks.replay", {"subscriber_id": subscription_id,
                                            "since": max(0.0, float(since))})


def resume(subscription_id: int) -> tuple[Subscription, str | None, float | None]:
    """Resume a subscription and, if it was paused, queue the replay of what it missed: from its
    pause, or from the first event of the failures that led to it if earlier. The subscription,
    the replay's task id and its start (None, None if it was not paused)."""
    subs = Subscriptions(data_redis(), get_settings())
    before = subs.get(subscription_id)
    after = subs.resume(subscription_id)
    since = before.replay_from()
    if before.active or since is None:
        return after, None, None
    return after, queue_replay(subscription_id, since), since


def send(sub: Subscription, event: Event, s: Settings, r: redis.Redis) -> Result:
    """One signed POST of one event to one subscription, and its accounting."""
    wait = RateLimits(s).acquire([Limit(s.webhook_rate_limit, ("webhooks", str(sub.id)))])
    if wait > 0:
        return Result("wait", retry_after=wait)
    try:
        secret = sub.secret(s)
    except SealedUnreadable as exc:
        log.error("webhooks: subscription %d: %s", sub.id, exc)
        return Result("unreadable", str(exc))
    payload = signing.body(event, s)
    msg_id = signing.message_id(sub.id, event.photo_id)
    marker = Subscriptions(r, s).marker_key(sub.id, event.photo_id)
    retry_after = None
    try:
        answer = guard.request("POST", sub.callback_url, body=payload.encode(),
                               headers=signing.headers(secret, msg_id, payload), s=s)
    except guard.Refused as exc:
        return _failed(r, s, sub, event, f"refused: {exc.why}", marker=marker, refused=True)
    except guard.Unreachable as exc:
        return _failed(r, s, sub, event, str(exc))
    if answer.ok:
        pipe = r.pipeline(transaction=False)  # the marker and the counter: one round trip
        STATE(r, [Subscriptions(r, s).key(sub.id), marker],
              ["delivered", marker_ttl(s), repr(time.time())], pipe=pipe)
        metrics.incr(pipe, s, "webhooks.sent")
        pipe.execute()
        return Result("sent")
    if 300 <= answer.status < 400:
        where = answer.headers.get("location", "")
        why = f"HTTP {answer.status}: redirect not followed" + (f" (to {where[:200]})"
                                                              if where else "")
    else:
        why = f"HTTP {answer.status}"
        if answer.status in (429, 503):
            retry_after = _retry_after(answer.headers.get("retry-after"))
    result = _failed(r, s, sub, event, why)
    return Result(result.kind, result.reason, retry_after)


def _failed(r: redis.Redis, s: Settings, sub: Subscription, event: Event, why: str, *,
            marker: str | None = None, refused: bool = False) -> Result:
    keys = [Subscriptions(r, s).key(sub.id)] + ([marker] if marker else [])
    pipe = r.pipeline(transaction=False)
    STATE(r, keys, ["failed", s.webhook_pause_after, repr(time.time()), why[:500],
                    repr(event.at), REFUSED, marker_ttl(s)], pipe=pipe)
    metrics.incr(pipe, s, "webhooks.failed")
    if refused:
        metrics.incr(pipe, s, "webhooks.refused")
    failures, paused = cast("list[int]", pipe.execute()[0])
    if paused:
        metrics.incr(r, s, "webhooks.paused")
        log.warning("webhooks: subscription %d paused after %d failed deliveries in a row "
                    "(last: %s)", sub.id, failures, why)
        return Result("paused", why)
    return Result("refused" if refused else "failed", why)


def _tally(out: Outcome, subscription_id: int, result: Result) -> None:
    prom.webhook_delivery(result.kind)
    if result.kind == "sent":
        out.sent += 1
    elif result.kind == "wait":
        out.waiting += 1
    elif result.kind == "paused":
        out.paused.append(subscription_id)
    elif result.kind == "refused":
        out.refused += 1
    elif result.kind == "unreadable":
        out.unreadable.append(subscription_id)
    else:
        out.failed[subscription_id] = result.reason
    if result.retry_after is not None:
        out.retry_after = max(out.retry_after or 0.0, result.retry_after)


def _match_and_log(r: redis.Redis, s: Settings, subs: Subscriptions, photo_id: int,
                   owner_id: int, caption: str) -> list[tuple[Subscription, Event, str | None]]:
    """The subscriptions the photo matches, by id, each with the photo logged in its event log
    (the first time kept, the log trimmed) and its delivered-marker: one script call."""
    now = time.time()
    keep = s.webhook_log_days * 86400
    keys = [subs.by_key("user", str(owner_id))]
    keys += [subs.by_key("tag", tag) for tag in caption_tags(caption)]
    reply = cast("list[Any]", MATCH(r, keys, [
        s.key("webhooks"), f"{photo_id}:{owner_id}", repr(now), repr(now - keep),
        MAX_LOG_EVENTS, int(keep) + 86400, photo_id]))
    out = []
    for i in range(0, len(reply), 4):
        sid, fields, at, mark = int(reply[i]), reply[i + 1], float(reply[i + 2]), reply[i + 3]
        sub = subs.parse(sid, dict(zip(fields[::2], fields[1::2], strict=True)))
        out.append((sub, Event(sid, sub.object, sub.object_id, photo_id, owner_id, at), mark))
    return sorted(out, key=lambda found: found[0].id)


def _send_all(todo: Sequence[tuple[Subscription, Event]], s: Settings,
              r: redis.Redis) -> list[Result]:
    """Each (subscription, event) sent, at most FARM_WEBHOOK_CONCURRENCY at once; the results
    in the same order."""
    if len(todo) <= 1:
        return [send(sub, event, s, r) for sub, event in todo]
    pool = _senders(s)
    results: list[Result | None] = [None] * len(todo)
    pending: dict[Future[Result], int] = {}
    for i, (sub, event) in enumerate(todo):
        if len(pending) >= s.webhook_concurrency:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                results[pending.pop(future)] = future.result()
        pending[pool.submit(send, sub, event, s, r)] = i
    for future in as_completed(pending):
        results[pending[future]] = future.result()
    return [result for result in results if result is not None]


def _senders(s: Settings) -> ThreadPoolExecutor:
    """The process's sending threads, shared by its deliver tasks (threads are made once, not
    per task): enough for every io thread's task to have FARM_WEBHOOK_CONCURRENCY in flight."""
    size = s.io_threads * s.webhook_concurrency
    return _pools.get(size, lambda: ThreadPoolExecutor(size, thread_name_prefix="webhooks"))


def _event(sub: Subscription, member: str, at: float) -> Event:
    photo, _, owner = member.partition(":")
    return Event(sub.id, sub.object, sub.object_id, int(photo), int(owner), float(at))


def _retry_after(value: str | None) -> float | None:
    """Retry-After as seconds (a number or an HTTP date), capped at MAX_RETRY_AFTER."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER) or None


def _report(r: redis.Redis, s: Settings, what: str, out: Outcome) -> None:
    """The log line; counters are written as each answer comes (send), but for waits."""
    if out.waiting:
        metrics.incr(r, s, "webhooks.ratelimited", out.waiting)
    log.info("webhooks: %s matched=%d sent=%d skipped=%d held=%d failed=%d paused=%s "
             "refused=%d waiting=%d", what, out.matched, out.sent, out.skipped, out.held,
             len(out.failed), out.paused or "-", out.refused, out.waiting)


def _summary(failed: dict[int, str]) -> str:
    shown = "; ".join(f"subscription {sid}: {why}" for sid, why in list(failed.items())[:5])
    return shown + (f"; and {len(failed) - 5} more" if len(failed) > 5 else "")

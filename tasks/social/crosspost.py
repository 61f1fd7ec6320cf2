"""social.crosspost's work: one photo posted to one network, on the owner's linked account, once.

In order, for (photo, network):
1. One round trip reads the post record, the pending marker and the photo's tombstone
   (tasks/social/posts.py). A record of a post: "already posted", nothing more is done. A
   deleted photo, or an owner with no linked account (unlinked after uploading): not the farm's
   failure; recorded as skipped with the reason, one log line, done.
2. The photo's full variant (1080 px JPEG) from the blob store; missing: PermanentError.
3. The (photo, network) lock, so two deliveries running at once cannot both post; then a slot
   under the farm-wide limits (the account's, then the app's: FARM_*_ACCOUNT_LIMIT/APP_LIMIT,
   and any pause a server asked for). None: RateLimited, before any request is made.
4. Reconciliation, when the pending marker is there (an earlier attempt sent a post and its
   outcome is unknown: the worker died between the network's answer and the record, or the
   request timed out after it left). Facebook: the Page's RECENT newest uploaded photos are
   listed; one whose text holds this photo's link is recorded as the post, done. X: nothing to
   list (reading timelines costs quota most apps lack), so the post simply goes again: X refuses
   a text its account posted recently with 403 "duplicate content", and our text always holds
   the photo's own link, so that 403 is recorded as posted (post id unknown).
5. The pending marker is set, then the post goes out (X: upload then tweet; Facebook: the photo
   with its message). The network's answer is followed at once by the record, in one round trip
   (``die_at("social.answered")`` sits between them for the kill tests). A refusal that proves
   nothing was posted (a 4xx, a rate limit) drops the marker this attempt set; an unknown
   outcome (a 5xx, a timeout) keeps it for the retry's reconciliation. 190 from Facebook: the
   account is unlinked, with the reason, and the task fails permanently. 401/403 from X: the
   same, once tasks/social/refusals.py confirms it is the account X refuses (refused again a
   retry later) and not the farm's app (many accounts refused at once: nothing is unlinked,
   the post retries later, as TransientError, saying to check the consumer key and secret).

**The duplicate window that remains.** Before the pending marker is set nothing can have been
posted, so a death there costs nothing. After it, a repeat is possible only when an attempt
whose post did reach the network is followed by one that cannot see it:
- Facebook: the post is not among the Page's RECENT newest uploaded photos when the next attempt
  lists them (more than RECENT other photos uploaded to the Page meanwhile, or Facebook's listing
  lagging behind the upload), or its text was edited to drop the link, or it was deleted;
- X: X no longer refuses the repeat: the first tweet was deleted, or is older than X's duplicate
  detection reaches (undocumented; retries here come within FARM_RETRY_MAX_DELAY, redeliveries
  within the visibility timeout), or the text differs (FARM_PHOTO_LINK changed in between). A
  repeated media upload alone is harmless: unused media expires within a day;
- either: the pending marker expired (FARM_MARKER_TTL, longer than any message can still run),
  or the data Redis lost the marker or record it had acknowledged (a crash with
  ``appendfsync everysec``).
The kill tests (PHOTOFARM_FAULT_POINT=social.answered) show a worker killed between the answer
and the record leaves exactly one post on either network.
"""

from __future__ import annotations

import contextlib
import logging
import random
from dataclasses import dataclass

from config.settings import Settings, get_settings
from tasks.blobs import BlobNotFound, open_store, photo_key
from tasks.core import metrics, prom, timing
from tasks.core.errors import PermanentError, RateLimited, TransientError
from tasks.core.faults import die_at
from tasks.core.locks import LockError, holder, try_lock
from tasks.core.ratelimit import Limit, RateLimits
from tasks.core.redis import data_redis
from tasks.social import captions, facebook, refusals, twitter
from tasks.social.accounts import Account, LinkedAccounts
from tasks.social.posts import POSTED, PostRecords
from tasks.social.refusals import RefusalGuard

log = logging.getLogger("farm.social")

POSTED_NOW, ALREADY, RECONCILED, SKIPPED = "posted", "already posted", "reconciled", "skipped"
RATE_JITTER = 1.0  # seconds added at random to a farm-wide limit's wait: no herd at the reset


@dataclass(frozen=True)
class Outcome:
    """How a cross-post ended: ``status`` posted, already posted (a record was there),
    reconciled (an earlier attempt's post found, or X's duplicate refusal) or skipped."""

    status: str
    network: str
    photo_id: int
    post_id: str = ""
    account: str = ""
    reason: str = ""


def crosspost(photo_id: int, owner_id: int, network: str, caption: str = "") -> Outcome:
    """Post the photo to ``network`` on the owner's linked account, once (module docstring)."""
    s, r = get_settings(), data_redis()
    posts = PostRecords(r, s)
    with timing.phase("check"):
        record, pending, deleted = posts.state(photo_id, network)
    if record and record.get("status") == POSTED:
        return _done(s, Outcome(ALREADY, network, photo_id, record.get("post_id", ""),
                                record.get("account", "")))
    if deleted:
        return _skip(s, posts, photo_id, owner_id, network, f"photo {photo_id} was deleted")
    accounts = LinkedAccounts(r, s)
    account = accounts.get(owner_id, network)
    if account is None:
        last = accounts.last_unlink(owner_id, network)
        why = f" (unlinked: {last.reason})" if last else ""
        return _skip(s, posts, photo_id, owner_id, network,
                     f"user {owner_id} has no linked {network} account{why}")
    with timing.phase("fetch"):
        image = _full_variant(s, photo_id)

    lock_key = posts.lock_key(photo_id, network)
    lock = try_lock(r, lock_key, s.task_time_limit)  # no run outlives its hard time limit
    if lock is None:
        # A wait, not a failure (its retries are not used up): the holder finishes, or it died
        # and its lock expires. RabbitMQ redelivers a dead worker's message at once, while the
        # lock lives on for up to the time limit.
        left = max(0.1, r.pttl(lock_key) / 1000)
        raise RateLimited(f"another attempt at {network} for photo {photo_id} is running "
                          f"({holder(r, lock_key) or 'just finished'})",
                          retry_after=min(left, s.social_timeout))
    try:
        return _post(s, posts, accounts, account, photo_id, image, caption,
                     unknown_before=pending is not None)
    finally:
        with contextlib.suppress(LockError):  # expired: a run past its time limit is dying
            lock.release()


def _post(s: Settings, posts: PostRecords, accounts: LinkedAccounts, account: Account,
          photo_id: int, image: bytes, caption: str, *, unknown_before: bool) -> Outcome:
    network, owner_id = account.network, account.user_id
    limits = RateLimits(s)
    scopes = {"account": (network, "account", str(owner_id)), "app": (network, "app")}
    account_limit = s.twitter_account_limit if network == "twitter" else s.facebook_account_limit
    app_limit = s.twitter_app_limit if network == "twitter" else s.facebook_app_limit
    wait = limits.acquire([Limit(account_limit, scopes["account"]),
                           Limit(app_limit, scopes["app"])])
    if wait > 0:
        raise RateLimited(f"farm-wide {network} limit reached for {account.label}",
                          retry_after=wait + random.uniform(0, RATE_JITTER))

    def pause(scope: str, seconds: float) -> None:
        limits.pause(scopes[scope], seconds)

    link = captions.link_for(photo_id, s)
    if unknown_before and network == "facebook":
        with timing.phase("reconcile"):
            found = facebook.find_post(s, account, link, pause)
        if found:
            posts.record_posted(photo_id, network, post_id=found, account=account.label,
                                user_id=owner_id, how="found")
            return _done(s, Outcome(RECONCILED, network, photo_id, found, account.label,
                                    "an earlier attempt's post, found on the Page"))

    posts.mark_pending(photo_id, network, account.label)
    try:
        with timing.phase("post"):
            if network == "twitter":
                post_id = twitter.post_photo(s, account, image,
                                             captions.tweet_text(caption, link), pause)
            else:
                post_id = facebook.post_photo(s, account, image,
                                              captions.facebook_message(caption, link), pause)
    except twitter.Duplicate as exc:
        die_at("social.answered")
        posts.record_posted(photo_id, network, post_id="", account=account.label,
                            user_id=owner_id, how="duplicate")
        return _done(s, Outcome(RECONCILED, network, photo_id, "", account.label, str(exc)))
    except (twitter.AccountRefused, facebook.AccountRefused) as exc:
        if not unknown_before:
            posts.clear_pending(photo_id, network)
        if network == "twitter":
            _unless_the_app_is_refused(s, account, photo_id, exc)
        accounts.unlink(owner_id, network, reason=str(exc))
        metrics.incr(data_redis(s.redis_url), s, f"social.{network}.unlinked")
        log.warning("social: network=%s photo=%d outcome=unlinked account=%s reason=%s",
                    network, photo_id, account.label, exc)
        raise PermanentError(f"{exc}; the account was unlinked") from None
    except (RateLimited, PermanentError):
        if not unknown_before:  # nothing was posted: no need to reconcile next time
            posts.clear_pending(photo_id, network)
        raise
    die_at("social.answered")
    posts.record_posted(photo_id, network, post_id=post_id, account=account.label,
                        user_id=owner_id, how="posted")
    return _done(s, Outcome(POSTED_NOW, network, photo_id, post_id, account.label))


def _unless_the_app_is_refused(s: Settings, account: Account, photo_id: int,
                               exc: Exception) -> None:
    """Returns when X's refusal may unlink the account; else raises TransientError, the account
    kept (tasks/social/refusals.py: a second refusal confirms it; many accounts refused at once
    mean X refuses the app's own credentials)."""
    guard = RefusalGuard(data_redis(s.redis_url), s, account.network)
    verdict, count = guard.judge(account.user_id)
    if verdict == refusals.UNLINK:
        return
    r = data_redis(s.redis_url)
    if verdict == refusals.APP:
        metrics.incr(r, s, f"social.{account.network}.app_refused")
        message = (f"X refuses the app's credentials (check FARM_TWITTER_CONSUMER_KEY and "
                   f"FARM_TWITTER_CONSUMER_SECRET): {count} accounts refused within "
                   f"{refusals.REFUSAL_WINDOW / 60:.0f} minutes, so {account.label} stays "
                   f"linked; {exc}")
        if guard.alarm_once():
            log.error("social: network=%s photo=%d outcome=app_refused accounts=%d %s",
                      account.network, photo_id, count, message)
        raise TransientError(message, retry_after=refusals.APP_FAULT_RETRY)
    metrics.incr(r, s, f"social.{account.network}.refused_once")
    log.warning("social: network=%s photo=%d outcome=refused_once account=%s reason=%s",
                account.network, photo_id, account.label, exc)
    raise TransientError(f"{exc}; the account is unlinked if X refuses it again (once is not "
                         "proof: X refuses every account when the app's own credentials are "
                         "wrong)", retry_after=guard.confirm_after)


def _full_variant(s: Settings, photo_id: int) -> bytes:
    key = photo_key(photo_id, "full")
    try:
        return open_store(s).get(key)
    except BlobNotFound:
        raise PermanentError(f"photo {photo_id} has no full variant in storage ({key}): not "
                             "processed yet, or deleted") from None


def _skip(s: Settings, posts: PostRecords, photo_id: int, owner_id: int, network: str,
          reason: str) -> Outcome:
    posts.record_skipped(photo_id, network, user_id=owner_id, reason=reason)
    return _done(s, Outcome(SKIPPED, network, photo_id, reason=reason))


def _done(s: Settings, out: Outcome) -> Outcome:
    prom.crosspost(out.network, out.status)
    if out.status == ALREADY:
        metrics.incr(data_redis(s.redis_url), s, f"social.{out.network}.already")
    log.info("social: network=%s photo=%d outcome=%s post_id=%s account=%s%s", out.network,
             out.photo_id, out.status.replace(" ", "_"), out.post_id or "-", out.account or "-",
             f" reason={out.reason}" if out.reason else "")
    return out

"""The guard between X refusing an account's credentials and the farm unlinking that account.

X answers 401 (or a 403 other than a duplicate) when a user revoked the app, or was suspended:
the account is unlinked, and the user links it again. But X answers 401 just the same for EVERY
user when the farm's own credentials are wrong (a mistyped or rotated
FARM_TWITTER_CONSUMER_SECRET, a suspended app): unlinking on every 401 would then unlink every
account that tries to post, and each of those users would have to authorise the app again (the
farm forgets an unlinked account's tokens). So a refusal is judged farm-wide first
(:meth:`RefusalGuard.judge`):

- ``APP``: APP_FAULT_ACCOUNTS or more distinct accounts were refused within REFUSAL_WINDOW.
  That is X refusing the app, not these users: nothing is unlinked, the post is retried in
  APP_FAULT_RETRY seconds (a TransientError; once the task's retries are used up it is
  dead-lettered with that message, for a replay once the credentials are fixed), and the
  error is logged once per window. The alarm lasts as long as refusals keep coming: each one
  counts again.
- ``CONFIRM``: the account's first refusal (of a run of refusals less than REFUSAL_WINDOW
  apart) is less than CONFIRM_AFTER old. Nothing is unlinked yet: the post is retried after
  CONFIRM_AFTER, so other accounts' posts meanwhile can show whether the app is at fault.
- ``UNLINK``: X refused the account again, at least CONFIRM_AFTER after its first refusal, and
  fewer than APP_FAULT_ACCOUNTS accounts were refused within the window: the caller unlinks it.

**What this guarantees.** An account is unlinked only when X refused it twice, a retry apart,
with fewer than APP_FAULT_ACCOUNTS distinct accounts refused in the last REFUSAL_WINDOW
(counting it). Hence an app-level fault unlinks nobody if APP_FAULT_ACCOUNTS accounts are
refused within CONFIRM_AFTER of the first refusal (a busy farm, or a backlog); and whatever the
traffic, no more than APP_FAULT_ACCOUNTS - 1 accounts are unlinked in any REFUSAL_WINDOW (an
unlinked account stays counted for a window after its last refusal). A farm where fewer accounts
than that post within the window cannot tell a revoked user from a refused app, and may unlink
that many per window while the fault lasts. **Accounts unlinked before the alarm stay
unlinked**: their tokens are gone, so each must be linked again (the user authorises the app
again; an operator runs ``farm social link`` with the new tokens); ``farm social list`` shows
who is linked, and the last unlink's reason is kept (tasks/social/accounts.py).

The price: a truly revoked account is unlinked one retry (CONFIRM_AFTER) later than at its first
refusal, and its post uses one retry on the way. Posts that succeed meanwhile do not reset the
count: APP_FAULT_ACCOUNTS truly revoked accounts within one window (a wave of suspensions) would
raise a false alarm; it fails safe (nobody is unlinked, the posts dead-letter with the message).

Layout in the data Redis (``farm`` standing for FARM_KEY_PREFIX):
- ``farm:social:refused:{network}``: sorted set, user id -> time of its last refusal; trimmed to
  REFUSAL_WINDOW on every refusal, expires a window after the last;
- ``farm:social:refused:{network}:{user_id}``: the time of the account's first refusal of the
  current run (set if absent, expires a window after its last refusal);
- ``farm:social:app-refused:{network}``: set for a window when the alarm is logged.
One MULTI per refusal records it and counts: concurrent workers each see a distinct count.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal, cast

import redis

from config.settings import Settings

# Ten minutes: long enough that a backlog's posts, and the retries of refused ones (CONFIRM_AFTER,
# APP_FAULT_RETRY apart), all fall within it; short enough that unrelated revocations, a few a day
# on a farm of this size, rarely fall in one window.
REFUSAL_WINDOW = 600.0  # seconds
# Three: one account revoked or suspended is routine, two within ten minutes happens, three is
# very unlikely unless X refuses the app itself (a wrong consumer secret refuses every account,
# so the first three users who post reach it). Higher would unlink more users on such a fault.
APP_FAULT_ACCOUNTS = 3
APP_FAULT_RETRY = 300.0  # seconds until a post refused for the app's credentials runs again
CONFIRM_AFTER = 60.0  # seconds between an account's first refusal and the one that unlinks it

Verdict = Literal["unlink", "confirm", "app"]
UNLINK: Verdict = "unlink"
CONFIRM: Verdict = "confirm"
APP: Verdict = "app"

clock: Callable[[], float] = time.time  # the tests move it


class RefusalGuard:
    def __init__(self, r: redis.Redis, s: Settings, network: str = "twitter") -> None:
        self.r, self.s, self.network = r, s, network

    @property
    def confirm_after(self) -> float:
        """CONFIRM_AFTER, or less where retries never wait that long (FARM_RETRY_MAX_DELAY caps
        every retry's delay): the retry that confirms must come late enough to count."""
        return min(CONFIRM_AFTER, self.s.retry_max_delay)

    def _recent_key(self) -> str:
        return self.s.key("social", "refused", self.network)

    def _first_key(self, user_id: int) -> str:
        return self.s.key("social", "refused", self.network, user_id)

    def _alarm_key(self) -> str:
        return self.s.key("social", "app-refused", self.network)

    def judge(self, user_id: int) -> tuple[Verdict, int]:
        """Record that X refused this account now; the verdict (module docstring) and how many
        distinct accounts were refused within the window, this one included."""
        now = clock()
        window = int(REFUSAL_WINDOW) + 1
        recent, first = self._recent_key(), self._first_key(user_id)
        pipe = self.r.pipeline(transaction=True)
        pipe.zremrangebyscore(recent, "-inf", now - REFUSAL_WINDOW)
        pipe.zadd(recent, {str(user_id): now})
        pipe.zcard(recent)
        pipe.expire(recent, window)
        pipe.set(first, repr(now), nx=True, ex=window)  # exact: compared below
        pipe.get(first)
        pipe.expire(first, window)
        answers = pipe.execute()
        count, first_at = int(answers[2]), float(answers[5])
        if count >= APP_FAULT_ACCOUNTS:
            return APP, count
        if now - first_at >= self.confirm_after:
            return UNLINK, count
        return CONFIRM, count

    def alarm_once(self) -> bool:
        """True for the first caller in a window (it logs the alarm), False for the rest."""
        return bool(self.r.set(self._alarm_key(), f"{clock():.3f}", nx=True,
                               ex=int(REFUSAL_WINDOW)))

    def refused(self) -> list[int]:
        """The accounts refused within the window, oldest refusal first (for operators, tests)."""
        now = clock()
        members = cast("list[str]", self.r.zrangebyscore(self._recent_key(),
                                                          now - REFUSAL_WINDOW, "+inf"))
        return [int(m) for m in members]

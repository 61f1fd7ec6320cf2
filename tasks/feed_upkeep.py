"""Feed upkeep: follow backfills, unfollows, deletes, rebuilds, activity, and the feed-trim job.

Plain functions of ids, testable without a broker; tasks/feeds.py wraps them as tasks. Every change
to a feed is one Lua script on the user's feed shard, so it is atomic against the fan-out's own
script (tasks/fanout.py): whichever runs second sees the other's ids, and neither leaves a
duplicate. Keys and sharding are tasks/feed_store.py's. Every function is safe to run twice.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterable, Iterator, Sequence

import redis

from config.celery_app import app
from config.queues import queue_for
from config.settings import Settings, get_settings
from schedules.batch import Progress, Result, no_progress
from tasks import enqueue
from tasks.errors import PermanentError
from tasks.feed_store import (
    LUA_NEWER,
    MAX_PHOTO_ID,
    FeedStore,
    check_id,
    feed_store,
    lua,
)
from tasks.ids import make_id

log = logging.getLogger("farm.feeds")

EVENT_ID = re.compile(r"[0-9A-Za-z_-]{1,64}")  # it becomes part of a key
PIPELINE_BATCH = 500  # followees' post lists read per round trip in a rebuild
SCAN_COUNT = 1000  # keys per SCAN step in the feed-trim job
# A rebuild keeps what fan-out writes while it runs: entries that were not in the feed when it
# looked (exact, given fan-out records the post before any feed), and, as insurance against a
# writer in another order or a skewed clock, entries whose id is this recent.
REBUILD_MARGIN_MS = 60_000

# Shared by the scripts below. Lists are newest first; RPUSH in slices stays under unpack()'s
# C-stack limit (~8000 values).
_LUA_LISTS = LUA_NEWER + """
local function merge(a, b, cap)
  local out, seen, n, i, j = {}, {}, 0, 1, 1
  while n < cap and (i <= #a or j <= #b) do
    local x
    if j > #b or (i <= #a and not newer(b[j], a[i])) then x = a[i]; i = i + 1
    else x = b[j]; j = j + 1 end
    if not seen[x] then seen[x] = true; n = n + 1; out[n] = x end
  end
  return out
end
local function same(a, b)
  if #a ~= #b then return false end
  for k = 1, #a do if a[k] ~= b[k] then return false end end
  return true
end
local function store(key, ids)
  redis.call('DEL', key)
  for k = 1, #ids, 4000 do redis.call('RPUSH', key, unpack(ids, k, math.min(k + 3999, #ids))) end
end
"""

# KEYS[1] feed; ARGV[1] cap, ARGV[2] tombstone prefix, ARGV[3..] ids newest first. The shard's
# tombstones are checked in the same atomic step as the write (the delete sets them on every
# shard first), so a delete can never be undone by a backfill that read the posts before it.
# Returns how many became new entries.
BACKFILL_LUA = _LUA_LISTS + """
local cap, tomb, new = tonumber(ARGV[1]), ARGV[2], {}
for k = 3, #ARGV do
  if redis.call('EXISTS', tomb .. ARGV[k]) == 0 then new[#new + 1] = ARGV[k] end
end
local cur = redis.call('LRANGE', KEYS[1], 0, -1)
local out = merge(cur, new, cap)
if same(out, cur) then return 0 end
store(KEYS[1], out)
local had, n = {}, 0
for _, x in ipairs(cur) do had[x] = true end
for _, x in ipairs(out) do if not had[x] then n = n + 1 end end
return n
"""

# KEYS[1] feed; ARGV the ids to take out. Rewrites only when one was there; returns how many.
_REMOVE = _LUA_LISTS + """
local drop, out = {}, {}
for _, x in ipairs(ARGV) do drop[x] = true end
local cur = redis.call('LRANGE', KEYS[1], 0, -1)
for _, x in ipairs(cur) do if not drop[x] then out[#out + 1] = x end end
if #out < #cur then store(KEYS[1], out) end
return #cur - #out
"""

# KEYS feeds (all on this shard); ARGV[1] the photo id.
_DELETE = """
local n = 0
for _, key in ipairs(KEYS) do n = n + redis.call('LREM', key, 0, ARGV[1]) end
return n
"""

# KEYS[1] feed; ARGV[1] cap, ARGV[2] floor id, ARGV[3] tombstone prefix, ARGV[4] count b of the
# ids seen before the snapshot, ARGV[5 .. b+4] those ids, the rest the rebuilt feed newest first.
# Entries that landed since (not seen before) or are newer than the floor are a fan-out racing
# us: kept. Tombstones checked here, as in BACKFILL_LUA.
_REBUILD = _LUA_LISTS + """
local cap, floor, tomb, b = tonumber(ARGV[1]), ARGV[2], ARGV[3], tonumber(ARGV[4])
local before, new, landed = {}, {}, {}
for k = 5, b + 4 do before[ARGV[k]] = true end
for k = b + 5, #ARGV do
  if redis.call('EXISTS', tomb .. ARGV[k]) == 0 then new[#new + 1] = ARGV[k] end
end
local cur = redis.call('LRANGE', KEYS[1], 0, -1)
for _, x in ipairs(cur) do
  if not before[x] or not newer(floor, x) then landed[#landed + 1] = x end
end
table.sort(landed, newer)  -- fan-out keeps feeds sorted; a rebuild repairs one that is not
local out = merge(new, landed, cap)
if not same(out, cur) then store(KEYS[1], out) end
return #out
"""

# KEYS[1] seen-marker, KEYS[2] activity list; ARGV[1] marker TTL, ARGV[2] entry, ARGV[3] cap.
_ACTIVITY = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return 0 end
if redis.call('LPUSH', KEYS[2], ARGV[2]) > tonumber(ARGV[3]) then
  redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[3]) - 1)
end
return 1
"""

# KEYS feeds; ARGV[1] cap. Returns {lists trimmed, entries dropped}.
_TRIM = """
local cap, lists, dropped = tonumber(ARGV[1]), 0, 0
for _, key in ipairs(KEYS) do
  local n = redis.call('LLEN', key)
  if n > cap then
    redis.call('LTRIM', key, 0, cap - 1)
    lists = lists + 1; dropped = dropped + n - cap
  end
end
return {lists, dropped}
"""

# --- validation ---------------------------------------------------------------------------------

def _photo(value: object) -> int:
    return check_id("photo_id", value, MAX_PHOTO_ID)


def _newest_first(raw: Iterable[str]) -> list[str]:
    """Decimal photo ids, deduplicated and sorted newest first; anything else is skipped, since a
    non-numeric member would break the scripts' comparison."""
    ids = {int(x) for x in raw if x.isascii() and x.isdigit()}
    return [str(x) for x in sorted(ids, reverse=True)]


def _live(store: FeedStore, s: Settings, ids: list[str]) -> list[str]:
    """The ids whose photo has no tombstone (one MGET)."""
    dead = store.graph.mget([store.tombstone_key(x) for x in ids])
    return [x for x, d in zip(ids, dead, strict=True) if d is None]


# --- follow, unfollow -------------------------------------------------------------------------

def backfill(follower_id: int, followee_id: int, *, recheck: bool = True) -> int:
    """Merge the followee's newest posts into the follower's feed; returns how many were added.

    A no-op unless the follow still stands: an unfollow processed before this (tasks on a queue
    may run out of order) must not be undone by it. An unfollow landing while this runs is
    caught by looking again after the write (the web tier changes the graph before it enqueues
    user_unfollowed, so a removal that ran before the write sees the graph changed too).
    """
    check_id("follower_id", follower_id)
    check_id("followee_id", followee_id)
    s = get_settings()
    store = feed_store(s)
    if not _follows(store, follower_id, followee_id):
        return 0
    posts = _newest_first(store.graph.lrange(store.posts_key(followee_id), 0,
                                             s.feed_backfill - 1))
    if not posts:
        return 0
    shard = store.shard_for(follower_id)
    added = int(lua(shard, BACKFILL_LUA)(keys=[store.feed_key(follower_id)],
                                          args=[s.feed_cap, store.tombstone_key(""), *posts]))
    if recheck and not _follows(store, follower_id, followee_id):
        remove_followee(follower_id, followee_id, recheck=False)
        return 0
    return added


def remove_followee(follower_id: int, followee_id: int, *, recheck: bool = True) -> int:
    """Take the followee's posts out of the follower's feed; returns how many were removed.

    A no-op if the follower follows them again by now (a later follow's backfill may have run);
    a follow landing while this runs is caught by looking again after the removal.
    """
    check_id("follower_id", follower_id)
    check_id("followee_id", followee_id)
    s = get_settings()
    store = feed_store(s)
    if _follows(store, follower_id, followee_id):
        return 0
    posts = _newest_first(store.graph.lrange(store.posts_key(followee_id), 0, s.posts_cap - 1))
    if not posts:
        return 0
    shard = store.shard_for(follower_id)
    removed = int(lua(shard, _REMOVE)(keys=[store.feed_key(follower_id)], args=posts))
    if recheck and _follows(store, follower_id, followee_id):
        backfill(follower_id, followee_id, recheck=False)
        return 0
    return removed


def _follows(store: FeedStore, follower_id: int, followee_id: int) -> bool:
    return store.graph.zscore(store.following_key(follower_id), str(followee_id)) is not None


# --- deletes ------------------------------------------------------------------------------------

def delete_photo(photo_id: int, owner_id: int) -> Result:
    """Tombstone the photo, take it out of the owner's posts and feed, then enqueue one
    feeds.delete_chunk per feed_chunk_size followers (by follower id, as fan-out walks them)."""
    _photo(photo_id)
    check_id("owner_id", owner_id)
    s = get_settings()
    store = feed_store(s)
    # First, so a fan-out, backfill or rebuild that writes from now on skips the photo: each
    # checks the tombstone on the feed shard in the same atomic step as its write.
    for client in {id(c): c for c in [store.graph, *store.shards]}.values():
        client.set(store.tombstone_key(photo_id), "1", ex=s.marker_ttl)
    store.graph.lrem(store.posts_key(owner_id), 0, str(photo_id))
    own = store.shard_for(owner_id)
    lua(own, _DELETE)(keys=[store.feed_key(owner_id)], args=[photo_id])

    size, chunks = store.follower_chunks(owner_id, s.feed_chunk_size)
    name = "feeds.delete_chunk"
    with app.producer_or_acquire() as producer:
        for lo, hi in chunks:
            app.send_task(name, producer=producer, queue=queue_for(name), kwargs={
                "photo_id": photo_id, "owner_id": owner_id, "lo": lo, "hi": hi})
    log.info("photo=%d deleted followers=%d chunks=%d", photo_id, size, len(chunks))
    return {"photo_id": photo_id, "followers": size, "chunks": len(chunks)}


def delete_chunk(photo_id: int, owner_id: int, lo: int, hi: int) -> int:
    """Remove the photo from the feeds of the owner's followers with ids in (lo, hi]: one script
    per feed shard. Returns how many entries went."""
    _photo(photo_id)
    check_id("owner_id", owner_id)
    if isinstance(lo, bool) or not isinstance(lo, int) or lo < 0:
        raise PermanentError(f"lo must be a non-negative integer, got {lo!r}")
    check_id("hi", hi)
    s = get_settings()
    store = feed_store(s)
    members = store.graph.zrangebyscore(store.followers_key(owner_id), f"({lo}", hi)
    removed = 0
    for index, uids in store.by_shard(int(m) for m in members).items():
        shard = store.shards[index]
        removed += int(lua(shard, _DELETE)(keys=[store.feed_key(u) for u in uids],
                                               args=[photo_id]))
    return removed


# --- rebuild ------------------------------------------------------------------------------------

def _recent_posts(store: FeedStore, uids: list[int], n: int) -> Iterator[str]:
    for start in range(0, len(uids), PIPELINE_BATCH):
        pipe = store.graph.pipeline(transaction=False)
        for uid in uids[start:start + PIPELINE_BATCH]:
            pipe.lrange(store.posts_key(uid), 0, n - 1)
        for posts in pipe.execute():
            yield from posts


def rebuild_feed(user_id: int) -> int:
    """Rebuild the user's feed from the newest posts of everyone they follow (and their own);
    returns its new length. Posts a fan-out writes while this runs are kept."""
    check_id("user_id", user_id)
    s = get_settings()
    store = feed_store(s)
    shard, feed = store.shard_for(user_id), store.feed_key(user_id)
    # What the feed held before the snapshot: anything else in it at write time landed during.
    before = shard.lrange(feed, 0, -1)
    floor = make_id(int(time.time() * 1000) - REBUILD_MARGIN_MS, 0, 0)
    following = [int(m) for m in store.graph.zrange(store.following_key(user_id), 0, -1)]
    ids = _newest_first(_recent_posts(store, [user_id, *following], s.feed_backfill))
    # Deleted photos out before capping (the script checks again, atomically), taking a feed's
    # worth at a time: usually one MGET.
    live: list[str] = []
    for start in range(0, len(ids), s.feed_cap):
        live += _live(store, s, ids[start:start + s.feed_cap])
        if len(live) >= s.feed_cap:
            break
    live = live[:s.feed_cap]
    return int(lua(shard, _REBUILD)(
        keys=[feed], args=[s.feed_cap, floor, store.tombstone_key(""), len(before), *before,
                           *live]))


def rebuild_feeds(client: redis.Redis, s: Settings, progress: Progress = no_progress,
                  users: Sequence[int] = ()) -> Result:
    """The feed-rebuild batch job (on demand: `farm batch feed-rebuild USER_ID ...`): rebuild_feed
    for each user in turn, after checking every id first, so a bad one means nothing is done."""
    del client, s  # feeds live on the shards, which feed_store knows; rebuild_feed reads settings
    uids = [check_id("user_id", uid) for uid in users]
    if not uids:
        raise PermanentError("feed-rebuild needs at least one user id")
    out = {"rebuilt": 0, "entries": 0}
    progress("users", 0, len(uids))
    for uid in uids:
        length = rebuild_feed(uid)
        log.info("feed-rebuild user=%d entries=%d", uid, length)
        out["rebuilt"] += 1
        out["entries"] += length
        progress("users", out["rebuilt"], len(uids))
    log.info("feed-rebuild %s", " ".join(f"{k}={v}" for k, v in out.items()))
    return out


# --- activity -----------------------------------------------------------------------------------

def add_activity(user_id: int, kind: str, actor_id: int, event_id: str,
                 photo_id: int | None) -> bool:
    """Add one entry to the user's activity list, unless this event was added before; the list
    stays capped at activity_cap. Returns whether it was added."""
    try:
        enqueue.validate_activity(user_id, kind, actor_id, photo_id)
    except ValueError as exc:
        raise PermanentError(str(exc)) from None
    check_id("user_id", user_id)
    check_id("actor_id", actor_id)
    if not isinstance(event_id, str) or not EVENT_ID.fullmatch(event_id):
        raise PermanentError(f"event_id must be 1-64 letters, digits, '-' or '_', "
                             f"got {event_id!r}")
    s = get_settings()
    store = feed_store(s)
    entry = json.dumps({"kind": kind, "actor": actor_id, "photo": photo_id, "event": event_id,
                        "at": int(time.time())}, separators=(",", ":"))
    marker = f"{store.activity_key(user_id)}:seen:{event_id}"
    shard = store.shard_for(user_id)
    return bool(lua(shard, _ACTIVITY)(keys=[marker, store.activity_key(user_id)],
                                          args=[s.marker_ttl, entry, s.activity_cap]))


# --- the feed-trim batch job --------------------------------------------------------------------

def trim_feeds(client: redis.Redis, s: Settings, progress: Progress = no_progress) -> Result:
    """Trim every feed list over feed_cap, on every shard (SCAN, never KEYS). Fan-out trims as it
    writes; this catches what a cap lowered by configuration, or a bug, left behind."""
    del client  # feeds live on the shards, which feed_store knows
    store = feed_store(s)
    pattern = re.sub(r"([*?\[\]\\])", r"\\\1", s.key_prefix) + ":feed:*"
    out = {"shards": len(store.shards), "feeds": 0, "trimmed": 0, "dropped": 0}
    for shard in store.shards:
        trim = lua(shard, _TRIM)
        cursor = 0
        while True:
            cursor, keys = shard.scan(cursor, match=pattern, count=SCAN_COUNT, _type="list")
            if keys:
                lists, dropped = trim(keys=keys, args=[s.feed_cap])
                out["trimmed"] += int(lists)
                out["dropped"] += int(dropped)
            out["feeds"] += len(keys)
            progress("feeds", out["feeds"], None)
            if cursor == 0:
                break
    progress("feeds", out["feeds"], out["feeds"])
    log.info("feed-trim %s", " ".join(f"{k}={v}" for k, v in out.items()))
    return out

"""Feed fan-out: a photo's id into every follower's feed, active followers first.

``fan_out`` cuts the owner's followers into chunks by follower id (not rank, so a follow or an
unfollow during a fan-out shifts nobody into another chunk) and enqueues each chunk twice: the
active followers' pass on ``feeds``, all of them first, then the rest on ``feeds_batch``.
``write_chunk`` is one Lua call on the data Redis (which followers, is the photo deleted) and,
per feed shard with followers in the chunk, one pipeline of write scripts of at most WRITE_SLICE
followers each: insert in sorted place, trim only when over the cap, and with the last slice set
the chunk's done-marker in the same atomic step, so a chunk run twice (redelivery, replay) writes
nothing the second time. When the feeds live on the data Redis itself, each slice selects and
writes in one script instead. Before any of that, the post goes into the
owner's posts list (for backfills and rebuilds) and their own feed; a tombstoned photo goes nowhere.

"Active" is judged against the photo's own time (from its id), not the clock when a chunk runs,
so both passes and any replay agree on who is in which pass.

Feed keys are built inside the shard script from a prefix rather than passed as KEYS: fine on
standalone servers (each shard is one), not valid under Redis Cluster. Key layout: feed_store.py.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis

from config.settings import Settings, get_settings
from tasks import fanout_ledger, timing
from tasks.errors import PermanentError
from tasks.fanout_ledger import chunk_name
from tasks.feed_store import (
    LUA_NEWER,
    MAX_PHOTO_ID,
    MAX_USER_ID,
    FeedStore,
    check_id,
    feed_store,
    lua,
)
from tasks.ids import id_time_ms

# A touch recorded after the active pass looked may carry a clock a little behind the one that
# minted the photo id; anyone seen this close to (or after) the post is also in the inactive pass.
CLOCK_SKEW_S = 60.0

# place(key, id, cap, last): put photo `id` into the list at `key` in its sorted place (newest
# first), never twice, keeping at most `cap` entries (`last` is tostring(cap - 1)). Returns 1 when
# written, 0 when already there or older than everything in a full list. Arguments to redis.call
# are strings: Redis' Lua bridge formats every number it is given, which costs per call.
LUA_PLACE = LUA_NEWER + """
local call = redis.call
local function place(key, id, cap, last)
  local head = call('LINDEX', key, '0')
  if not head or newer(id, head) then  -- the usual case: the newest photo goes on top
    if call('LPUSH', key, id) > cap then call('LTRIM', key, '0', last) end
    return 1
  end
  if head == id then return 0 end
  -- A late arrival (an older photo's chunk ran after a newer one's): scan in growing pages,
  -- since its place is nearly always near the top.
  local start, size = 1, 16
  while true do
    local items = call('LRANGE', key, start, start + size - 1)
    for _, x in ipairs(items) do
      if x == id then return 0 end
      if newer(id, x) then
        if call('LINSERT', key, 'BEFORE', x, id) > cap then call('LTRIM', key, '0', last) end
        return 1
      end
    end
    if #items < size then  -- older than everything there: append unless the list is full
      if start + #items >= cap then return 0 end
      call('RPUSH', key, id)
      return 1
    end
    start, size = start + size, size * 2
  end
end
"""

# write_feeds(marker, id, cap, ttl, prefix, each, finish): `id` into the feed of every user id
# the iterator `each` yields, then (when `finish`: the chunk's last slice) the chunk's marker, in
# one atomic step. Returns -1 when the marker was there already (the chunk ran here before), else
# how many feeds took the photo.
_LUA_WRITE = LUA_PLACE + """
local function write_feeds(marker, id, cap, ttl, prefix, each, finish)
  if call('EXISTS', marker) == 1 then return -1 end
  local last, written, n = tostring(cap - 1), 0, #id
  for uid in each do
    local key = prefix .. uid
    local head = call('LINDEX', key, '0')
    -- place()'s usual case inlined (newest on top): this loop is the fan-out's whole cost
    if not head or #head < n or (#head == n and head < id) then
      if call('LPUSH', key, id) > cap then call('LTRIM', key, '0', last) end
      written = written + 1
    elseif head ~= id then
      written = written + place(key, id, cap, last)
    end
  end
  if finish then call('SET', marker, written, 'EX', ttl) end
  return written
end
"""

# pick(ids, akey, cutoff, recent, want, n): of the first `n` follower ids in `ids`, those in the
# wanted pass, judged by their score in the last-active set `akey`: seen since `cutoff` (the
# active pass), or not, or seen since `recent` (the inactive pass).
# followers(fkey, akey, lo, hi, cutoff, recent, want): pick over the followers with lo < id <= hi.
_LUA_SELECT = """
local function pick(ids, akey, cutoff, recent, want, n)
  local out = {}
  for s = 1, n, 4000 do  -- unpack() has a stack limit
    local batch = {unpack(ids, s, math.min(s + 3999, n))}
    local seen = redis.call('ZMSCORE', akey, unpack(batch))
    for i, uid in ipairs(batch) do
      local t = seen[i] and tonumber(seen[i])
      local take
      if want then take = t and t >= cutoff
      else take = not t or t < cutoff or t >= recent end
      if take then out[#out + 1] = uid end
    end
  end
  return out
end

local function followers(fkey, akey, lo, hi, cutoff, recent, want)
  local ids = redis.call('ZRANGE', fkey, '(' .. lo, hi, 'BYSCORE')
  return pick(ids, akey, cutoff, recent, want, #ids)
end
"""

# On a feed shard. KEYS: the chunk's marker here, the photo's tombstone here.
# ARGV: photo id, cap, marker TTL, feed key prefix, follower ids joined by commas (one argument:
# a thousand separate ones cost the client more to encode than the script takes to run), and
# 1 on the chunk's last slice. Returns -2 when the photo is deleted, else write_feeds'.
_SHARD_WRITE = _LUA_WRITE + """
if call('EXISTS', KEYS[2]) == 1 then return -2 end
return write_feeds(KEYS[1], ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4],
                   string.gmatch(ARGV[5], '%d+'), ARGV[6] == '1')
"""

# On the data Redis. KEYS: the owner's followers, last_active, the photo's tombstone, the
# owner's unfollow count. ARGV: lo, hi, active cutoff, seen-recently cutoff, pass (1|0).
# Returns -1 when the photo is deleted, else {the pass's follower ids joined by commas, the
# unfollow count as it stood}.
_SELECT = _LUA_SELECT + """
if redis.call('EXISTS', KEYS[3]) == 1 then return -1 end
return {table.concat(followers(KEYS[1], KEYS[2], ARGV[1], ARGV[2], tonumber(ARGV[3]),
                               tonumber(ARGV[4]), ARGV[5] == '1'), ','),
        redis.call('GET', KEYS[4]) or '0'}
"""

# When the feeds live on the data Redis itself (no FARM_FEED_SHARDS), a slice selects and writes
# in one script: one round trip per slice, and no unfollow can land between its select and write.
# KEYS: the owner's followers, last_active, the photo's tombstone, the chunk's marker.
# ARGV: after (the slice starts past this follower id), hi, active cutoff, seen-recently cutoff,
# pass (1|0), photo id, cap, marker TTL, feed key prefix, slice size.
# Returns {-2} when the photo is deleted, {-1} when the chunk ran before, else {entries written,
# the last follower id this slice covered, or '' when it ended the chunk (and set the marker)}.
_LOCAL_SLICE = _LUA_SELECT + _LUA_WRITE + """
if call('EXISTS', KEYS[3]) == 1 then return {-2, ''} end
local size = tonumber(ARGV[10])
local ids = call('ZRANGE', KEYS[1], '(' .. ARGV[1], ARGV[2], 'BYSCORE', 'LIMIT', '0', size + 1)
local n = math.min(#ids, size)
local last = #ids > size and ids[size] or ''
local picked, i = pick(ids, KEYS[2], tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5] == '1', n), 0
local written = write_feeds(KEYS[4], ARGV[6], tonumber(ARGV[7]), ARGV[8], ARGV[9],
                            function() i = i + 1 return picked[i] end, last == '')
return {written, last}
"""

# On the data Redis. KEYS: the owner's followers. ARGV: follower ids joined by commas.
# Returns those no longer following, joined by commas.
_GONE = """
local ids, gone = {}, {}
for uid in string.gmatch(ARGV[1], '%d+') do ids[#ids + 1] = uid end
for s = 1, #ids, 4000 do  -- unpack() has a stack limit
  local batch = {unpack(ids, s, math.min(s + 3999, #ids))}
  local scores = redis.call('ZMSCORE', KEYS[1], unpack(batch))
  for i, uid in ipairs(batch) do
    if not scores[i] then gone[#gone + 1] = uid end
  end
end
return table.concat(gone, ',')
"""

# On the data Redis. KEYS: the photo's tombstone, the owner's posts. ARGV: photo id, cap.
_OWN_POST = LUA_PLACE + """
if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
return place(KEYS[2], ARGV[1], tonumber(ARGV[2]), tostring(tonumber(ARGV[2]) - 1))
"""

# Followers per write script. A chunk task covers FARM_FEED_CHUNK_SIZE followers (thousands:
# fewer, bigger tasks cost the farm less) but a script blocks its server while it runs, so each
# shard gets the chunk in slices of this many, pipelined: one round trip, and feed reads on the
# shard wait at most one slice (~2-3 ms).
WRITE_SLICE = 1000


def _run(client: redis.Redis, text: str, keys: list[str], args: list[Any]) -> Any:
    return lua(client, text)(keys=keys, args=args)


def _write_feeds(store: FeedStore, s: Settings, photo_id: int, ids: str, chunk: str) -> int:
    """Write to every follower in ``ids`` (comma-joined): per shard with followers in it, the
    slices in one pipeline, the shards' pipelines in flight together. -1 if every shard had done
    this chunk already. Only the last slice sets a shard's marker: a rerun after a crash between
    slices redoes them, and place() never writes an id a feed already holds."""
    if not ids:
        return 0
    if len(store.shards) == 1:
        groups = {0: ids.split(",")}
    else:
        groups = {i: list(map(str, members))
                  for i, members in store.by_shard(map(int, ids.split(","))).items()}
    keys = [store.marker_key(photo_id, chunk), store.tombstone_key(photo_id)]
    head = [photo_id, s.feed_cap, s.marker_ttl, f"{s.key_prefix}:feed:"]

    def write(item: tuple[int, list[str]]) -> list[int]:
        shard, uids = store.shards[item[0]], item[1]
        script, pipe = lua(shard, _SHARD_WRITE), shard.pipeline(transaction=False)
        for start in range(0, len(uids), WRITE_SLICE):
            last = start + WRITE_SLICE >= len(uids)
            script(keys=keys, args=[*head, ",".join(uids[start:start + WRITE_SLICE]), int(last)],
                   client=pipe)
        return [int(r) for r in pipe.execute()]

    # Each shard's scripts run on its own server: waiting on them one by one would add up.
    results = [write(g) for g in groups.items()] if len(groups) == 1 else list(
        _threads(len(store.shards)).map(write, groups.items()))
    flat = [r for shard in results for r in shard]
    if all(r == -1 for r in flat):
        return -1
    return sum(r for r in flat if r > 0)


_pools: dict[int, ThreadPoolExecutor] = {}


def _threads(n: int) -> ThreadPoolExecutor:
    """This process's threads for talking to the shards at once (made after fork)."""
    pool = _pools.get(os.getpid())
    if pool is None:
        pool = _pools[os.getpid()] = ThreadPoolExecutor(n, thread_name_prefix="feed-shard")
    return pool


def chunk_ranges(store: FeedStore, owner_id: int, size: int) -> list[tuple[int, int]]:
    """The owner's followers as (lo, hi] follower-id ranges of about ``size`` each."""
    return store.follower_chunks(owner_id, size)[1]


def fan_out(photo_id: int, owner_id: int) -> dict[str, Any]:
    """Record the post, put it in the owner's own feed, and enqueue the followers' chunks."""
    check_id("photo_id", photo_id, MAX_PHOTO_ID)
    check_id("owner_id", owner_id, MAX_USER_ID)
    s, store = get_settings(), feed_store()
    summary: dict[str, Any] = {"deleted": False, "followers": 0, "chunks": 0}
    with timing.phase("own"):
        if _run(store.graph, _OWN_POST, [store.tombstone_key(photo_id), store.posts_key(owner_id)],
                [photo_id, s.posts_cap]) == -1:
            summary["deleted"] = True
            return summary
        _write_feeds(store, s, photo_id, str(owner_id), "own")
    with timing.phase("walk"):
        n, chunks = store.follower_chunks(owner_id, s.feed_chunk_size)
    if not chunks:
        return summary
    with timing.phase("enqueue"):  # every active pass first, each listed in the ledger
        fanout_ledger.send(store, s, photo_id, owner_id,
                           [(lo, hi, active) for active in (True, False) for lo, hi in chunks])
    summary.update(followers=n, chunks=len(chunks))
    return summary


def write_chunk(photo_id: int, owner_id: int, lo: int, hi: int, active: bool) -> int:
    """Write one pass of one chunk; entries written, or -1 when it had run already."""
    check_id("photo_id", photo_id, MAX_PHOTO_ID)
    check_id("owner_id", owner_id, MAX_USER_ID)
    if (isinstance(lo, bool) or isinstance(hi, bool) or not isinstance(lo, int)
            or not isinstance(hi, int) or not 0 <= lo < hi <= MAX_USER_ID):
        raise PermanentError(f"chunk bounds must be ints with 0 <= lo < hi, got {lo!r}, {hi!r}")
    if not isinstance(active, bool):
        raise PermanentError(f"active must be true or false, got {active!r}")
    s, store = get_settings(), feed_store()
    chunk = chunk_name(lo, hi, active)
    written = _write_chunk(store, s, photo_id, owner_id, lo, hi, active, chunk)
    fanout_ledger.done(store, photo_id, owner_id, chunk)
    return written


def _write_chunk(store: FeedStore, s: Settings, photo_id: int, owner_id: int, lo: int, hi: int,
                 active: bool, chunk: str) -> int:
    # Both passes judge activity at the photo's own time, so a replay decides the same way; the
    # inactive pass also takes anyone seen since, who may have turned active after the active
    # pass looked (last_active only grows), so nobody falls between the two passes.
    posted = id_time_ms(photo_id) / 1000
    cutoff = posted - s.feed_active_days * 86400
    keys = [store.followers_key(owner_id), store.last_active, store.tombstone_key(photo_id)]
    args: list[Any] = [lo, hi, repr(cutoff), repr(posted - CLOCK_SKEW_S), int(active)]
    if len(store.shards) == 1 and store.shards[0] is store.graph:
        with timing.phase("write"):
            return _write_local(store, s, photo_id, keys, args, chunk)
    with timing.phase("select"):
        selected = _run(store.graph, _SELECT, [*keys, store.unfollows_key(owner_id)], args)
    if selected == -1:
        return 0
    uids, unfollows = selected
    with timing.phase("write"):
        written = _write_feeds(store, s, photo_id, uids, chunk)
    if uids and (store.graph.get(store.unfollows_key(owner_id)) or "0") != unfollows:
        with timing.phase("recheck"):
            written -= _take_back(store, photo_id, owner_id, uids)
    return written


def _write_local(store: FeedStore, s: Settings, photo_id: int, keys: list[str],
                 args: list[Any], chunk: str) -> int:
    """The chunk on the data Redis, slice by slice (select and write in one script each);
    entries written, or -1 when it had run already."""
    keys = [*keys, store.marker_key(photo_id, chunk)]
    tail = [photo_id, s.feed_cap, s.marker_ttl, f"{s.key_prefix}:feed:", WRITE_SLICE]
    after, total = args[0], 0
    while True:
        written, last = _run(store.graph, _LOCAL_SLICE, keys, [after, *args[1:], *tail])
        if written == -2:  # deleted
            return 0
        if written == -1:  # the chunk ran before (or another run just finished it)
            return total or -1
        total += written
        if not last:
            return total
        after = last


def _take_back(store: FeedStore, photo_id: int, owner_id: int, uids: str) -> int:
    """Out of the feeds of followers who unfollowed while the chunk ran (the owner's unfollow
    count moved): the web tier changes the graph before it enqueues user_unfollowed, so an
    unfollow whose removal ran between our select and our write shows here, and one that lands
    after this look is removed by its own task. Returns how many feeds gave the photo back."""
    gone = _run(store.graph, _GONE, [store.followers_key(owner_id)], [uids])
    if not gone:
        return 0
    removed = 0
    for index, members in store.by_shard(map(int, gone.split(","))).items():
        pipe = store.shards[index].pipeline(transaction=False)
        for uid in members:
            pipe.lrem(store.feed_key(uid), 1, str(photo_id))
        removed += sum(pipe.execute())
    return removed

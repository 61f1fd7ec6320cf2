-- Fan-out's writes (tasks/feeds/fanout.py). One file, four entry points sharing the helpers
-- below, chosen by ARGV[1]; A holds the entry's own arguments (ARGV[2..]).
--
-- Photo ids are 64-bit, beyond Lua's exact doubles (2**53), so they are compared as decimal
-- strings: the longer is larger, and equal lengths compare as text. Arguments to redis.call are
-- strings: Redis' Lua bridge formats every number it is given, which costs per call.
local call = redis.call
local A = {}
for i = 2, #ARGV do A[i - 1] = ARGV[i] end

local function newer(a, b)
  if #a ~= #b then return #a > #b end
  return a > b
end

-- Put photo `id` into the list at `key` in its sorted place (newest first), never twice, keeping
-- at most `cap` entries (`last` is tostring(cap - 1)). Returns 1 when written, 0 when already
-- there or older than everything in a full list.
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

-- `id` into the feed of every user id the iterator `each` yields, then (when `finish`: the
-- chunk's last slice) the chunk's marker, in one atomic step. Returns -1 when the marker was
-- there already (the chunk ran here before), else how many feeds took the photo.
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

-- Of the first `n` follower ids in `ids`, those in the wanted pass, judged by their score in the
-- last-active set `akey`: seen since `cutoff` (the active pass), or not, or seen since `recent`
-- (the inactive pass).
local function pick(ids, akey, cutoff, recent, want, n)
  local out = {}
  for s = 1, n, 4000 do  -- unpack() has a stack limit
    local batch = {unpack(ids, s, math.min(s + 3999, n))}
    local seen = call('ZMSCORE', akey, unpack(batch))
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

local entry = ARGV[1]

if entry == 'shard_write' then
  -- On a feed shard. KEYS: the chunk's marker here, the photo's tombstone here.
  -- A: photo id, cap, marker TTL, feed key prefix, follower ids joined by commas (one argument:
  -- a thousand separate ones cost the client more to encode than the script takes to run), and
  -- 1 on the chunk's last slice. Returns -2 when the photo is deleted, else write_feeds'.
  if call('EXISTS', KEYS[2]) == 1 then return -2 end
  return write_feeds(KEYS[1], A[1], tonumber(A[2]), A[3], A[4], string.gmatch(A[5], '%d+'),
                     A[6] == '1')

elseif entry == 'select' then
  -- On the data Redis. KEYS: the owner's followers, last_active, the photo's tombstone, the
  -- owner's unfollow count. A: lo, hi, active cutoff, seen-recently cutoff, pass (1|0).
  -- Returns -1 when the photo is deleted, else {the pass's follower ids joined by commas, the
  -- unfollow count as it stood}.
  if call('EXISTS', KEYS[3]) == 1 then return -1 end
  local ids = call('ZRANGE', KEYS[1], '(' .. A[1], A[2], 'BYSCORE')
  local picked = pick(ids, KEYS[2], tonumber(A[3]), tonumber(A[4]), A[5] == '1', #ids)
  return {table.concat(picked, ','), call('GET', KEYS[4]) or '0'}

elseif entry == 'local_slice' then
  -- When the feeds live on the data Redis itself (no FARM_FEED_SHARDS), a slice selects and
  -- writes in one script: one round trip per slice, and no unfollow lands between the two.
  -- KEYS: the owner's followers, last_active, the photo's tombstone, the chunk's marker.
  -- A: after (the slice starts past this follower id), hi, active cutoff, seen-recently cutoff,
  -- pass (1|0), photo id, cap, marker TTL, feed key prefix, slice size.
  -- Returns {-2, ''} when the photo is deleted, {-1, ...} when the chunk ran before, else
  -- {entries written, the last follower id this slice covered, or '' when it ended the chunk
  -- (and set the marker)}.
  if call('EXISTS', KEYS[3]) == 1 then return {-2, ''} end
  local size = tonumber(A[10])
  local ids = call('ZRANGE', KEYS[1], '(' .. A[1], A[2], 'BYSCORE', 'LIMIT', '0', size + 1)
  local n = math.min(#ids, size)
  local last = #ids > size and ids[size] or ''
  local picked, i = pick(ids, KEYS[2], tonumber(A[3]), tonumber(A[4]), A[5] == '1', n), 0
  local written = write_feeds(KEYS[4], A[6], tonumber(A[7]), A[8], A[9],
                              function() i = i + 1 return picked[i] end, last == '')
  return {written, last}

elseif entry == 'own_post' then
  -- On the data Redis. KEYS: the photo's tombstone, the owner's posts. A: photo id, cap.
  -- Returns -1 when the photo is deleted, else place()'s.
  if call('EXISTS', KEYS[1]) == 1 then return -1 end
  return place(KEYS[2], A[1], tonumber(A[2]), tostring(tonumber(A[2]) - 1))
end

return redis.error_reply('fanout.lua: unknown entry ' .. tostring(entry))

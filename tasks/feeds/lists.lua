-- Whole-list rewrites of one feed (tasks/feeds/follows.py, rebuild.py, rebalance.py). One file,
-- three entry points sharing the helpers below, chosen by ARGV[1]; A holds the entry's own
-- arguments (ARGV[2..]). Each runs atomically on the user's feed shard, so it is atomic against
-- fan-out's own writes: whichever runs second sees the other's ids, and neither leaves a
-- duplicate. Lists are newest first; photo ids compare as decimal strings (see fanout.lua, whose
-- newer() and argument copy these repeat: a Redis script cannot import another).
local A = {}
for i = 2, #ARGV do A[i - 1] = ARGV[i] end

local function newer(a, b)
  if #a ~= #b then return #a > #b end
  return a > b
end

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

-- RPUSH in slices stays under unpack()'s C-stack limit (~8000 values).
local function store(key, ids)
  redis.call('DEL', key)
  for k = 1, #ids, 4000 do redis.call('RPUSH', key, unpack(ids, k, math.min(k + 3999, #ids))) end
end

local entry = ARGV[1]

if entry == 'backfill' then
  -- KEYS[1] feed; A[1] cap, A[2] tombstone prefix, A[3..] ids newest first. The shard's
  -- tombstones are checked in the same atomic step as the write (a delete sets them on every
  -- shard first), so a delete is never undone by a backfill that read the posts before it.
  -- Returns how many became new entries.
  local cap, tomb, new = tonumber(A[1]), A[2], {}
  for k = 3, #A do
    if redis.call('EXISTS', tomb .. A[k]) == 0 then new[#new + 1] = A[k] end
  end
  local cur = redis.call('LRANGE', KEYS[1], 0, -1)
  local out = merge(cur, new, cap)
  if same(out, cur) then return 0 end
  store(KEYS[1], out)
  local had, n = {}, 0
  for _, x in ipairs(cur) do had[x] = true end
  for _, x in ipairs(out) do if not had[x] then n = n + 1 end end
  return n

elseif entry == 'remove' then
  -- KEYS[1] feed; A the ids to take out. Rewrites only when one was there; returns how many.
  local drop, out = {}, {}
  for _, x in ipairs(A) do drop[x] = true end
  local cur = redis.call('LRANGE', KEYS[1], 0, -1)
  for _, x in ipairs(cur) do if not drop[x] then out[#out + 1] = x end end
  if #out < #cur then store(KEYS[1], out) end
  return #cur - #out

elseif entry == 'rebuild' then
  -- KEYS[1] feed; A[1] cap, A[2] floor id, A[3] tombstone prefix, A[4] count b of the ids seen
  -- before the snapshot, A[5 .. b+4] those ids, the rest the rebuilt feed newest first.
  -- Entries that landed since (not seen before) or are newer than the floor are a fan-out
  -- racing us: kept. Tombstones checked here, as in backfill. Returns the new length.
  local cap, floor, tomb, b = tonumber(A[1]), A[2], A[3], tonumber(A[4])
  local before, new, landed = {}, {}, {}
  for k = 5, b + 4 do before[A[k]] = true end
  for k = b + 5, #A do
    if redis.call('EXISTS', tomb .. A[k]) == 0 then new[#new + 1] = A[k] end
  end
  local cur = redis.call('LRANGE', KEYS[1], 0, -1)
  for _, x in ipairs(cur) do
    if not before[x] or not newer(floor, x) then landed[#landed + 1] = x end
  end
  table.sort(landed, newer)  -- fan-out keeps feeds sorted; a rebuild repairs one that is not
  local out = merge(new, landed, cap)
  if not same(out, cur) then store(KEYS[1], out) end
  return #out
end

return redis.error_reply('lists.lua: unknown entry ' .. tostring(entry))

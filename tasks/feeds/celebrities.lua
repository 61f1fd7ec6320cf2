-- Celebrity fan-out on read (tasks/feeds/celebrities.py). Two entry points, chosen by ARGV[1].
--
-- {p}:celebrities        hash: owner id -> "on" (a celebrity now), or the id of the first post
--                        fanned out on write again after the owner fell below the line (a former
--                        celebrity: posts older than that are still only in the posts list)
-- {p}:celebrities:read   sorted set (member = score = owner id): every owner in that hash, the
--                        owners whose posts feed reads merge in
--
-- Photo ids are 64-bit decimal strings, compared as in fanout.lua: the longer is the larger.

local call = redis.call

local function newer(a, b)
  if #a ~= #b then return #a > #b end
  return a > b
end

local entry = ARGV[1]

if entry == 'classify' then
  -- At a post, after it is in the owner's posts list. KEYS: the hash, the read set, the owner's
  -- posts, the owner's followers. ARGV: owner id, threshold, photo id.
  -- Returns {1 when the post is not to be fanned out on write (the owner is a celebrity) else 0,
  -- the follower count}.
  local owner, line, photo = ARGV[2], tonumber(ARGV[3]), ARGV[4]
  local n = call('ZCARD', KEYS[4])
  local state = call('HGET', KEYS[1], owner)
  if n >= line or (state == 'on' and n * 2 >= line) then  -- below half to step down
    if state ~= 'on' then
      call('HSET', KEYS[1], owner, 'on')
      call('ZADD', KEYS[2], owner, owner)
    end
    return {1, n}
  end
  if state == 'on' then  -- stepping down: from this post on, fanned out on write again
    call('HSET', KEYS[1], owner, photo)
    return {0, n}
  end
  if state then  -- a former celebrity: done once no post in the list predates the step down
    local oldest = call('LINDEX', KEYS[3], '-1')
    if not oldest or not newer(state, oldest) then
      call('HDEL', KEYS[1], owner)
      call('ZREM', KEYS[2], owner)
    end
  end
  return {0, n}

elseif entry == 'posts' then
  -- At a feed read. KEYS: the reader's following set, the read set. ARGV: posts key prefix,
  -- limit, before (a photo id, or '' for the newest). Returns the newest `limit` posts older
  -- than `before` among every merged owner the reader follows, newest first.
  local owners = call('ZINTER', '2', KEYS[1], KEYS[2])
  local prefix, limit, before = ARGV[2], tonumber(ARGV[3]), ARGV[4]
  local lists = {}
  for _, owner in ipairs(owners) do
    local key = prefix .. owner
    local start = 0
    if before ~= '' then  -- the list is newest first: binary search for the first older id
      local lo, hi = 0, call('LLEN', key)
      while lo < hi do
        local mid = math.floor((lo + hi) / 2)
        if newer(before, call('LINDEX', key, mid)) then hi = mid else lo = mid + 1 end
      end
      start = lo
    end
    local items = call('LRANGE', key, start, start + limit - 1)
    if #items > 0 then lists[#lists + 1] = {items, 1} end
  end
  -- Each list is newest first: take the newest head `limit` times (k-way merge), no sort.
  local out = {}
  while #out < limit do
    local best
    for _, l in ipairs(lists) do
      local head = l[1][l[2]]
      if head and (not best or newer(head, best[1][best[2]])) then best = l end
    end
    if not best then break end
    out[#out + 1] = best[1][best[2]]
    best[2] = best[2] + 1
  end
  return out
end

return redis.error_reply('celebrities.lua: unknown entry ' .. tostring(entry))

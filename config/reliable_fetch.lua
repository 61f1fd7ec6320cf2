-- Reliable fetch for kombu's Redis transport (config/reliable_redis.py). One file, three entry
-- points chosen by ARGV[1]:
--
--   fetch    take the next message off the first non-empty queue key, in the order given, and
--            record it as unacked (kombu's own hash and index) in the same atomic step;
--   claim    record a message the blocking wait moved into this consumer's in-flight list as
--            unacked, and take it out of that list, atomically; 0 if it is no longer there
--            (a sweep gave it back to its queue while this consumer was thought dead);
--   restore  give a dead consumer's in-flight list back to its queue, oldest at the front.
--
-- A message is never only in a client's memory: it is on its queue, in an in-flight list, or in
-- the unacked hash, and every move between them is one atomic step on the server.
--
-- kombu's unacked record is the JSON array [payload, exchange, routing_key] under the message's
-- delivery tag, and its index scores the tag by delivery time (the visibility timeout's clock).
-- The payload is spliced in as received, never decoded and re-encoded, so nothing of it changes.

local call = redis.call
local entry = ARGV[1]

-- The unacked record for a raw message, or nil if it is not a kombu message.
local function record(raw, unacked, index, now)
  local ok, message = pcall(cjson.decode, raw)
  if not ok or type(message) ~= 'table' or type(message.properties) ~= 'table' then
    return nil
  end
  local props = message.properties
  local info = props.delivery_info
  local tag = props.delivery_tag
  if type(tag) ~= 'string' or type(info) ~= 'table' then return nil end
  local exchange, routing_key = info.exchange or '', info.routing_key or ''
  call('HSET', unacked, tag,
       '[' .. raw .. ',' .. cjson.encode(exchange) .. ',' .. cjson.encode(routing_key) .. ']')
  call('ZADD', index, now, tag)
  return tag
end

if entry == 'fetch' then
  -- KEYS: the queue keys in consuming order, then the unacked hash, its index, and the list
  -- that keeps messages which are not kombu's (never dropped, never delivered).
  -- ARGV[2]: now. Returns {queue key, raw message}, or nil when every queue is empty.
  local n = #KEYS
  local unacked, index, unparsable = KEYS[n - 2], KEYS[n - 1], KEYS[n]
  for i = 1, n - 3 do
    local raw = call('RPOP', KEYS[i])
    while raw do
      if record(raw, unacked, index, ARGV[2]) then return {KEYS[i], raw} end
      call('LPUSH', unparsable, raw)
      raw = call('RPOP', KEYS[i])
    end
  end
  return nil

elseif entry == 'claim' then
  -- KEYS: this consumer's in-flight list, the unacked hash, its index, the unparsable list.
  -- ARGV[2]: now, ARGV[3]: the raw message. Returns 1 (claimed: deliver it), 0 (gone), or -1
  -- (not a kombu message: kept aside, not delivered).
  if call('LREM', KEYS[1], 1, ARGV[3]) == 0 then return 0 end
  if record(ARGV[3], KEYS[2], KEYS[3], ARGV[2]) then return 1 end
  call('LPUSH', KEYS[4], ARGV[3])
  return -1

elseif entry == 'restore' then
  -- KEYS: an in-flight list, the queue it was filled from, its consumer's liveness key, the
  -- index of in-flight lists. ARGV[2]: the list's field in the index.
  -- A live consumer's list is left alone (-1); otherwise returns how many messages went back.
  if call('EXISTS', KEYS[3]) == 1 then return -1 end
  local moved = 0
  -- Newest first onto the queue's consuming end: the oldest ends up first in line again.
  while call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT') do moved = moved + 1 end
  call('HDEL', KEYS[4], ARGV[2])
  return moved
end

return redis.error_reply('reliable_fetch.lua: unknown entry ' .. tostring(entry))

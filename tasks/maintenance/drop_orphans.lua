-- Remove dead-letter index entries whose record is gone, atomically: a record() running
-- meanwhile writes its hash field and index entry in one MULTI, so it is never caught half-written.
-- KEYS[1] the records hash, KEYS[2] the index; ARGV the ids to look at. Returns how many went.
local n = 0
for _, id in ipairs(ARGV) do
  if redis.call('HEXISTS', KEYS[1], id) == 0 then n = n + redis.call('ZREM', KEYS[2], id) end
end
return n

-- Expire keys that have no TTL; TTL is checked in the same step, so a TTL set meanwhile stays.
-- KEYS the keys to look at; ARGV[1] the TTL in seconds. Returns how many got one.
local n = 0
for _, key in ipairs(KEYS) do
  if redis.call('TTL', key) == -1 then redis.call('EXPIRE', key, ARGV[1]); n = n + 1 end
end
return n

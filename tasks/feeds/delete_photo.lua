-- A deleted photo out of some feeds, all on this shard (tasks/feeds/deletes.py).
-- KEYS the feeds; ARGV[1] the photo id. Returns how many entries went.
local n = 0
for _, key in ipairs(KEYS) do n = n + redis.call('LREM', key, 0, ARGV[1]) end
return n

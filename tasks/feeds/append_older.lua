-- An activity list moved to its new shard (tasks/feeds/rebalance.py): the old entries are older
-- than anything written on the new shard since the switch, so they go after.
-- KEYS[1] the activity list on its new shard; ARGV[1] cap, then the old entries newest first.
local cap = tonumber(ARGV[1])
for k = 2, #ARGV, 4000 do
  redis.call('RPUSH', KEYS[1], unpack(ARGV, k, math.min(k + 3999, #ARGV)))
end
if redis.call('LLEN', KEYS[1]) > cap then redis.call('LTRIM', KEYS[1], 0, cap - 1) end
return 1

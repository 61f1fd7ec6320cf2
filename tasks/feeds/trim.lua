-- Feeds over their cap trimmed (the feed-trim job, tasks/feeds/trim.py).
-- KEYS the feeds; ARGV[1] cap. Returns {lists trimmed, entries dropped}.
local cap, lists, dropped = tonumber(ARGV[1]), 0, 0
for _, key in ipairs(KEYS) do
  local n = redis.call('LLEN', key)
  if n > cap then
    redis.call('LTRIM', key, 0, cap - 1)
    lists = lists + 1; dropped = dropped + n - cap
  end
end
return {lists, dropped}

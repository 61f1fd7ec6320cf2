-- One entry onto a user's activity list, once per event (tasks/feeds/activity.py).
-- KEYS[1] the event's seen-marker, KEYS[2] the activity list; ARGV[1] marker TTL, ARGV[2] the
-- entry, ARGV[3] cap. Returns 1 when added, 0 when the event was added before.
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return 0 end
if redis.call('LPUSH', KEYS[2], ARGV[2]) > tonumber(ARGV[3]) then
  redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[3]) - 1)
end
return 1

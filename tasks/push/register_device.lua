-- A device token registered to a user, moved off any previous owner in the same atomic step
-- (tasks/push/devices.py). KEYS: the token's owner key, the new owner's hash.
-- ARGV: devices-hash prefix, field ("{app_id} {token}"), user id, registration time.
local old = redis.call('GET', KEYS[1])
if old and old ~= ARGV[3] then redis.call('HDEL', ARGV[1] .. old, ARGV[2]) end
redis.call('SET', KEYS[1], ARGV[3])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[4])
return 1

-- A dead device token removed (tasks/push/devices.py), unless it was registered at or after the
-- cutoff (Apple's 410 timestamp: a re-registration since must survive it).
-- KEYS: the token's owner key. ARGV: devices-hash prefix, field, cutoff ('' for unconditional).
-- Returns 1 if removed.
local uid = redis.call('GET', KEYS[1])
if not uid then return 0 end
local at = redis.call('HGET', ARGV[1] .. uid, ARGV[2])
if at and ARGV[3] ~= '' and tonumber(at) >= tonumber(ARGV[3]) then return 0 end
redis.call('HDEL', ARGV[1] .. uid, ARGV[2])
redis.call('DEL', KEYS[1])
return 1

-- A new photo's subscriptions, each with the photo logged in its event log and its
-- delivered-marker read, in one round trip (tasks/webhooks/delivery.py: a post with one
-- subscriber otherwise pays three: the union of the indexes, the hashes, the log and markers).
--
-- KEYS: the index sets the photo matches ({p}:webhooks:by:user:{owner}, ...:by:tag:{tag}).
-- ARGV: prefix ({p}:webhooks), member ("{photo}:{owner}"), now, oldest score kept, events
--       kept, the log's TTL in seconds, photo id.
-- The subscriptions' own keys are named here from their ids, which only the union tells:
-- the data Redis is one server (feeds shard client-side), never a cluster, so a script may
-- touch keys it did not declare. Each log entry is added NX (a retry keeps the first time,
-- so the body, whose timestamp is the event's, is the same on every attempt), then trimmed by
-- age and count. A subscription removed since its id was indexed is skipped.
-- Returns a flat list, per subscription: id, its hash as a flat list, the event's time,
-- its delivered-marker (false when none).
local prefix, member, now = ARGV[1], ARGV[2], ARGV[3]
local oldest, keep, ttl, photo = ARGV[4], tonumber(ARGV[5]), ARGV[6], ARGV[7]
local out = {}
for _, id in ipairs(redis.call('SUNION', unpack(KEYS))) do
  local fields = redis.call('HGETALL', prefix .. ':sub:' .. id)
  if #fields > 0 then
    local log = prefix .. ':log:' .. id
    redis.call('ZADD', log, 'NX', now, member)
    redis.call('ZREMRANGEBYSCORE', log, '-inf', '(' .. oldest)
    redis.call('ZREMRANGEBYRANK', log, 0, -keep - 1)
    redis.call('EXPIRE', log, ttl)
    out[#out + 1] = id
    out[#out + 1] = fields
    out[#out + 1] = redis.call('ZSCORE', log, member) or now
    out[#out + 1] = redis.call('GET', prefix .. ':sent:' .. id .. ':' .. photo)
  end
end
return out

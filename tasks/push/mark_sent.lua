-- Sent-markers for the devices APNs answered 200 (tasks/push/send.py), one batch of answers in
-- one call: a pipeline of SETs costs the worker ~11 us of CPU a device in redis-py, this ~1.5 us,
-- and the marker is what a redelivery reads, so the sooner it is written the better.
-- KEYS: {p}:push:sent:{notification_id}:{app}:{token}, one per device. ARGV: the TTL in seconds.
-- Returns how many were marked.
for _, key in ipairs(KEYS) do
  redis.call('SET', key, 1, 'EX', ARGV[1])
end
return #KEYS

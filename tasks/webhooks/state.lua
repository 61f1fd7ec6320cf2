-- A webhook subscription's state changes (tasks/webhooks/subscriptions.py, delivery.py), each
-- atomic against the others and against a concurrent removal: a subscription removed meanwhile
-- is never brought back as a half hash. One file, four entry points chosen by ARGV[1].
--
-- KEYS[1]: the subscription's hash ({p}:webhooks:sub:{id}).
--
-- delivered  KEYS[2] the (subscription, photo) delivered-marker. ARGV: ttl, now.
--            The marker is set, the run of failures ends. Returns 1 (0: subscription gone).
-- failed     KEYS[2] (optional) a marker to set NX, ARGV: pause_after, now, error, event_at,
--            marker value, marker ttl. Counts one more failure in a row, remembers the oldest
--            event of the run (failing_since: where a replay after resume starts), and pauses an
--            active subscription whose run reaches pause_after. Returns {failures, paused now}
--            ({-1, 0}: subscription gone).
-- pause      ARGV: now, reason. Returns 1 paused, 2 already paused (its paused_at kept), 0 gone.
-- resume     Returns 1 resumed, 2 already active, 0 gone. The failure count and the run's
--            start are reset; paused_at is kept until the next pause (what the replay reads).
local sub = KEYS[1]
local entry = ARGV[1]

if redis.call('EXISTS', sub) == 0 then
  if entry == 'delivered' then
    redis.call('SET', KEYS[2], '1', 'EX', ARGV[2])
  end
  if entry == 'failed' then return {-1, 0} end
  return 0
end

if entry == 'delivered' then
  redis.call('SET', KEYS[2], '1', 'EX', ARGV[2])
  redis.call('HSET', sub, 'failures', 0, 'last_ok_at', ARGV[3])
  redis.call('HDEL', sub, 'failing_since')
  return 1
end

if entry == 'failed' then
  local pause_after, now, err, event_at = tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5]
  if KEYS[2] then
    redis.call('SET', KEYS[2], ARGV[6], 'NX', 'EX', ARGV[7])
  end
  local n = redis.call('HINCRBY', sub, 'failures', 1)
  local since = redis.call('HGET', sub, 'failing_since')
  if not since or tonumber(event_at) < tonumber(since) then
    redis.call('HSET', sub, 'failing_since', event_at)
  end
  redis.call('HSET', sub, 'last_error', err, 'last_error_at', now)
  if n >= pause_after and redis.call('HGET', sub, 'state') == 'active' then
    redis.call('HSET', sub, 'state', 'paused', 'paused_at', now,
               'paused_reason', n .. ' failed deliveries in a row; last: ' .. err)
    return {n, 1}
  end
  return {n, 0}
end

if entry == 'pause' then
  if redis.call('HGET', sub, 'state') == 'paused' then return 2 end
  redis.call('HSET', sub, 'state', 'paused', 'paused_at', ARGV[2], 'paused_reason', ARGV[3])
  return 1
end

if entry == 'resume' then
  local was = redis.call('HGET', sub, 'state')
  redis.call('HSET', sub, 'state', 'active', 'failures', 0, 'paused_reason', '')
  redis.call('HDEL', sub, 'failing_since')
  if was == 'paused' then return 1 end
  return 2
end

return redis.error_reply('state.lua: unknown entry ' .. tostring(entry))

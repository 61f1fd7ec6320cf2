-- A photo's record marked failed (tasks/photos/records.py) in one step, so a late failure can
-- never turn a photo that another run made ready into a failed one (delivery is at least once).
-- KEYS: the record, the index of records in processing.
-- ARGV: photo id, reason, now, mode, cutoff (for "stuck"), "1" to write a record where none is.
-- mode "run": the run that started the record failed: anything but ready is overwritten.
-- mode "late": known only from a dead letter: a failed record keeps the reason its run gave.
-- mode "stuck": the sweep: only a record still processing whose last attempt began at or before
-- the cutoff (a retry that started since moved its score on).
-- Answers 1 when the record was marked failed, 0 when it was left as it was.
local status = redis.call('HGET', KEYS[1], 'status')
local mode = ARGV[4]
if mode == 'stuck' then
  if status ~= 'processing' then
    redis.call('ZREM', KEYS[2], ARGV[1])  -- ended (or deleted) without leaving the index
    return 0
  end
  local since = redis.call('ZSCORE', KEYS[2], ARGV[1])
  if not since or tonumber(since) > tonumber(ARGV[5]) then return 0 end
elseif status == 'ready' or (mode == 'late' and status == 'failed') then
  return 0
elseif not status and ARGV[6] ~= '1' then
  return 0
end
redis.call('HSET', KEYS[1], 'status', 'failed', 'reason', ARGV[2], 'updated_at', ARGV[3])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1

-- Which of some follower ids no longer follow the owner (fan-out's look after its write).
-- On the data Redis. KEYS[1] the owner's followers; ARGV[1] follower ids joined by commas.
-- Returns those no longer following, joined by commas.
local ids, gone = {}, {}
for uid in string.gmatch(ARGV[1], '%d+') do ids[#ids + 1] = uid end
for s = 1, #ids, 4000 do  -- unpack() has a stack limit
  local batch = {unpack(ids, s, math.min(s + 3999, #ids))}
  local scores = redis.call('ZMSCORE', KEYS[1], unpack(batch))
  for i, uid in ipairs(batch) do
    if not scores[i] then gone[#gone + 1] = uid end
  end
end
return table.concat(gone, ',')

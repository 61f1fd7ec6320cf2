-- A follower set cut into chunks, in one atomic step (one snapshot).
-- On the data Redis. KEYS[1] the owner's followers; ARGV[1] chunk size. Returns the follower
-- count, then each chunk's last follower id but the last chunk's.
local n, step = redis.call('ZCARD', KEYS[1]), tonumber(ARGV[1])
local out = {n}
for r = step - 1, n - 2, step do out[#out + 1] = redis.call('ZRANGE', KEYS[1], r, r)[1] end
return out

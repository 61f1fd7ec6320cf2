-- A fan-out chunk crossed off its post's ledger (tasks/feeds/ledger.py), and the post off the
-- index once no chunk is left. KEYS: the post's ledger, the index. ARGV: chunk name, index member.
redis.call('HDEL', KEYS[1], ARGV[1])
if redis.call('HLEN', KEYS[1]) == 0 then redis.call('ZREM', KEYS[2], ARGV[2]) end

-- KEYS: record, due set. ARGV: kind, subject id, url, delivery id, now, member
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'kind', ARGV[1], 'id', ARGV[2], 'url', ARGV[3],
           'delivery_id', ARGV[4], 'status', 'pending', 'attempts', 0,
           'created_at', ARGV[5], 'next_attempt_at', ARGV[5])
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[6])
return 1

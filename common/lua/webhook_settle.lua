-- KEYS: record, due set. ARGV: member, attempt, outcome, now, next at, error, status code, ttl
-- A settled record expires after the retention time (0 keeps it).
if redis.call('HGET', KEYS[1], 'status') ~= 'pending' then return 0 end
if redis.call('HGET', KEYS[1], 'attempts') ~= ARGV[2] then return 0 end
if ARGV[7] ~= '' then redis.call('HSET', KEYS[1], 'status_code', ARGV[7]) end
if ARGV[3] == 'retry' then
  redis.call('HSET', KEYS[1], 'last_error', ARGV[6], 'next_attempt_at', ARGV[5])
  redis.call('ZADD', KEYS[2], ARGV[5], ARGV[1])
  return 1
end
if ARGV[3] == 'failed' then redis.call('HSET', KEYS[1], 'last_error', ARGV[6]) end
redis.call('HSET', KEYS[1], 'status', ARGV[3], 'finished_at', ARGV[4])
redis.call('HDEL', KEYS[1], 'next_attempt_at')
redis.call('ZREM', KEYS[2], ARGV[1])
if tonumber(ARGV[8]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[8]) end
return 1

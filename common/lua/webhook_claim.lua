-- KEYS: record, due set. ARGV: member, due by, lease until, now
-- Returns {attempt, url, delivery id}, or false if someone else took it first.
local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not score or tonumber(score) > tonumber(ARGV[2]) then return false end
if redis.call('HGET', KEYS[1], 'status') ~= 'pending' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return false
end
local attempt = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSET', KEYS[1], 'attempted_at', ARGV[4], 'next_attempt_at', ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
return {attempt, redis.call('HGET', KEYS[1], 'url'), redis.call('HGET', KEYS[1], 'delivery_id')}

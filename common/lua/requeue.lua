-- KEYS: job, unpublished set. ARGV: now, job id
-- A job whose worker died goes back to the queue; ``not_before`` of an earlier retry is spent.
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], 'status', 'queued', 'queued_at', ARGV[1], 'worker', '')
redis.call('HDEL', KEYS[1], 'not_before')
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[2])
return 1

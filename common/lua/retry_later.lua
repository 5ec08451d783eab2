-- KEYS: job, lease, running set, retry schedule
-- ARGV: worker id, now, not before, error, job id
-- Infrastructure trouble (storage, Redis) is not the job's fault: the job goes back to
-- queued with a time before which it is not run, and the delivery its claim counted is
-- given back, so only deliveries that killed a worker count towards poison.
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
if redis.call('HGET', KEYS[1], 'worker') ~= ARGV[1] then return 0 end
if tonumber(redis.call('HGET', KEYS[1], 'deliveries') or '0') > 0 then
  redis.call('HINCRBY', KEYS[1], 'deliveries', -1)
end
redis.call('HINCRBY', KEYS[1], 'infra_retries', 1)
redis.call('HSETNX', KEYS[1], 'infra_since', ARGV[2])
redis.call('HSET', KEYS[1], 'status', 'queued', 'queued_at', ARGV[2], 'worker', '',
           'not_before', ARGV[3], 'infra_error', ARGV[4])
redis.call('DEL', KEYS[2])
redis.call('SREM', KEYS[3], ARGV[5])
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[5])
return 1

-- KEYS: job, unpublished set, retry schedule
-- ARGV: prefix, unused, now, ttl, job id
-- Returns {status found, failed descendants...}. Queued and waiting jobs end here, their
-- waiting descendants failed with them; running jobs get a flag their worker checks at
-- every step.
local prefix, now, ttl = ARGV[1], ARGV[3], tonumber(ARGV[4])
--#include ending_lib
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'unknown'} end
if status == 'running' then
  redis.call('HSET', KEYS[1], 'cancel', '1')
  return {status}
end
if terminal[status] then return {status} end
redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_at', now,
           'error', 'cancelled by request', 'error_code', 'cancelled')
redis.call('ZREM', KEYS[2], ARGV[5])
redis.call('ZREM', KEYS[3], ARGV[5])
local result = fail_descendants(ARGV[5], 'parent cancelled')
ended(ARGV[5])
table.insert(result, 1, status)
return result

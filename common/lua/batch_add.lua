-- KEYS: job, pending set, job's batch set, batch hash. ARGV: batch id, job id, progress channel
-- Adds a job to a batch; a job that already ended is not pending, and is counted here
-- (once: only when it joins), the way the job store's ending script counts the others.
--#include terminal
local joined = redis.call('SADD', KEYS[3], ARGV[1])
local status = redis.call('HGET', KEYS[1], 'status')
if status and terminal[status] then
  if joined == 1 then
    redis.call('HINCRBY', KEYS[4], 'jobs_ended', 1)
    redis.call('HINCRBY', KEYS[4], 'jobs_' .. status, 1)
    redis.call('PUBLISH', ARGV[3], ARGV[2])
  end
  return 0
end
redis.call('SADD', KEYS[2], ARGV[2])
return 1

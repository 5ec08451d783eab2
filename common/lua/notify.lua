-- KEYS: job. ARGV: prefix, unused, now, ttl, job id. Settles batches and webhooks of a job
-- that has ended (a webhook set, or a batch joined, after the end).
local prefix, now, ttl = ARGV[1], ARGV[3], tonumber(ARGV[4])
--#include ending_lib
local status = redis.call('HGET', KEYS[1], 'status')
if not status or not terminal[status] then return 0 end
ended(ARGV[5])
return 1

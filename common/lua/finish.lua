-- KEYS: job, lease, running set, the ending worker's record ('' = none)
-- ARGV: prefix, status, now, ttl, job id, reason for failed descendants, then field/value pairs
-- Returns {released children, failed descendants}, or false if the job had already ended.
local prefix, now, ttl = ARGV[1], ARGV[3], tonumber(ARGV[4])
--#include ending_lib
local found = redis.call('HMGET', KEYS[1], 'status', 'not_before')
local status = found[1]
if not status or terminal[status] then return false end
local fields = {'status', ARGV[2], 'finished_at', now}
for i = 7, #ARGV do table.insert(fields, ARGV[i]) end
redis.call('HSET', KEYS[1], unpack(fields))
if found[2] then redis.call('HDEL', KEYS[1], 'not_before') end
if KEYS[4] ~= '' and redis.call('EXISTS', KEYS[4]) == 1 then
  redis.call('HINCRBY', KEYS[4], 'jobs_done', 1)  -- here, not a round trip of its own
end
redis.call('DEL', KEYS[2])
redis.call('SREM', KEYS[3], ARGV[5])
local released, failed = {}, {}
if ARGV[2] == 'succeeded' then
  released = release_children(ARGV[5])
else
  failed = fail_descendants(ARGV[5], ARGV[6])
end
ended(ARGV[5])
return {released, failed}

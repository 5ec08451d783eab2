-- KEYS: job, lease. ARGV: worker id, lease ttl s, max deliveries, now, job id, prefix,
-- the claiming worker's model ('' = any).
-- Claims by id alone (a worker reads nothing first): the record comes back with the
-- outcomes that need it. A job put back for a later retry (``not_before``) is not taken
-- early: the retry schedule publishes it again when it is due.
--#include terminal
local prefix = ARGV[6]
local found = redis.call('HMGET', KEYS[1], 'status', 'not_before', 'model')
local status, not_before, model = found[1], found[2], found[3]
if not status then return {'unknown'} end
if terminal[status] then return {'done'} end
if not model then  -- a record from before the model had its own field
  model = cjson.decode(redis.call('HGET', KEYS[1], 'spec')).model
end
if ARGV[7] ~= '' and model ~= ARGV[7] then
  return {'wrong_model', unpack(redis.call('HGETALL', KEYS[1]))}
end
if status == 'waiting' then return {'waiting'} end
if status == 'running' and redis.call('EXISTS', KEYS[2]) == 1 then return {'busy'} end
if status == 'queued' and tonumber(not_before or '0') > tonumber(ARGV[4]) then
  return {'later'}
end
local deliveries = redis.call('HINCRBY', KEYS[1], 'deliveries', 1)
if deliveries > tonumber(ARGV[3]) then
  return {'poison', unpack(redis.call('HGETALL', KEYS[1]))}
end
redis.call('HSET', KEYS[1], 'status', 'running', 'worker', ARGV[1], 'started_at', ARGV[4],
           'step', 0)
redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[2])
redis.call('SADD', prefix .. ':running:' .. model, ARGV[5])
return {'claimed', unpack(redis.call('HGETALL', KEYS[1]))}

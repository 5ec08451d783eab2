-- KEYS: job, parent job, parent's children set, unpublished set, conversation index
-- ARGV: spec json, now, job id, root id, turn, conversation index ttl s (0: none), model,
-- the sha256s of the job's adapters, space-separated ('': none; what warm routing reads)
-- Records a new job, or finds the identical one submitted before.
-- Returns {outcome, status, '1' if the job's message is owed (in the unpublished set)}.
--#include terminal
local existing = redis.call('HGET', KEYS[1], 'spec')
if existing then
  if existing ~= ARGV[1] then return {'conflict', ''} end
  local owed = redis.call('ZSCORE', KEYS[4], ARGV[3]) and '1' or '0'
  return {'exists', redis.call('HGET', KEYS[1], 'status'), owed}
end
local status = 'queued'
local reason = ''
if KEYS[2] ~= '' then
  local parent = redis.call('HGET', KEYS[2], 'status')
  if not parent then return {'no_parent', ''} end
  if parent == 'failed' or parent == 'cancelled' then
    status = 'failed'
    reason = 'parent ' .. parent
  elseif not terminal[parent] then
    status = 'waiting'
    redis.call('SADD', KEYS[3], ARGV[3])
  end
end
local fields = {'spec', ARGV[1], 'status', status, 'created_at', ARGV[2], 'root_id', ARGV[4],
                'turn', ARGV[5], 'deliveries', 0, 'model', ARGV[7]}
if ARGV[8] ~= '' then
  table.insert(fields, 'adapters')
  table.insert(fields, ARGV[8])
end
if status == 'queued' then
  table.insert(fields, 'queued_at')
  table.insert(fields, ARGV[2])
  redis.call('ZADD', KEYS[4], ARGV[2], ARGV[3])
elseif status == 'failed' then
  for _, v in ipairs({'error', reason, 'error_code', 'parent_failed', 'finished_at', ARGV[2]}) do
    table.insert(fields, v)
  end
end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('ZADD', KEYS[5], 'NX', ARGV[2], ARGV[3])
if tonumber(ARGV[6]) > 0 then redis.call('EXPIRE', KEYS[5], ARGV[6]) end
return {'created', status, status == 'queued' and '1' or '0'}

-- Lua shared by every script that ends a job: a job's end, the release or failure of
-- the children waiting on it, its batches' bookkeeping, the webhooks it owes and the
-- expiry of its record happen in one script, so no crash can leave half of them done.
-- Expects locals: prefix, now, ttl (seconds, 0 keeps records).
--#include terminal
local function job_key(id) return prefix .. ':job:' .. id end

local function owe_webhook(kind, id, url)
  local record = prefix .. ':webhook:' .. kind .. ':' .. id
  if redis.call('EXISTS', record) == 1 then return end
  local member = kind .. ':' .. id
  redis.call('HSET', record, 'kind', kind, 'id', id, 'url', url,
             'delivery_id', string.sub(redis.sha1hex(member .. ':' .. now), 1, 32),
             'status', 'pending', 'attempts', 0, 'created_at', now, 'next_attempt_at', now)
  redis.call('ZADD', prefix .. ':webhooks:due', now, member)
  redis.call('PUBLISH', prefix .. ':webhooks:wake', member)
end

local function expire(key)
  if ttl > 0 then redis.call('EXPIRE', key, ttl) end
end

local function settle_batches(id)
  local index = prefix .. ':jobbatches:' .. id
  local batches = redis.call('SMEMBERS', index)
  if #batches == 0 then return end  -- most jobs belong to no batch
  local status = redis.call('HGET', job_key(id), 'status') or 'unknown'
  for _, batch in ipairs(batches) do
    local key = prefix .. ':batch:' .. batch
    -- Counted once per job (the SREM says whether this end is news), so a follower
    -- checks the batch in O(1) and reads only the jobs named on the channel.
    if redis.call('SREM', key .. ':pending', id) == 1 then
      redis.call('HINCRBY', key, 'jobs_ended', 1)
      redis.call('HINCRBY', key, 'jobs_' .. status, 1)
      redis.call('PUBLISH', prefix .. ':batch-progress:' .. batch, id)
    end
    if redis.call('HGET', key, 'sealed') == '1' and redis.call('SCARD', key .. ':pending') == 0
        and redis.call('HSETNX', key, 'finished_at', now) == 1 then
      local ok, meta = pcall(cjson.decode, redis.call('HGET', key, 'meta') or 'null')
      if ok and type(meta) == 'table' and type(meta.webhook) == 'string'
          and meta.webhook ~= '' then
        local kind = meta.webhook_kind
        if type(kind) ~= 'string' or kind == '' then kind = 'batch' end
        owe_webhook(kind, batch, meta.webhook)
      end
      expire(key)
      expire(key .. ':rows')
      expire(key .. ':pending')
    end
  end
  expire(index)
end

-- The record of ``id`` has just become terminal.
local function ended(id)
  settle_batches(id)
  local found = redis.call('HMGET', job_key(id), 'webhook', 'status')
  if found[1] then owe_webhook('job', id, found[1]) end
  expire(job_key(id))
  -- A waiter gets the whole record, so it need not read it back; with nobody listening
  -- (most bulk jobs) nothing is encoded or sent.
  local channel = prefix .. ':ended:' .. id
  if redis.call('PUBSUB', 'NUMSUB', channel)[2] > 0 then
    redis.call('PUBLISH', channel, cjson.encode(redis.call('HGETALL', job_key(id))))
  end
end

-- Waiting children of a job that succeeded go to queued, into their model's unpublished
-- set: whoever ended the job publishes them, or the recovery loop does if it died first.
local function release_children(id)
  local released = {}
  local key = prefix .. ':children:' .. id
  local children = redis.call('SMEMBERS', key)
  for _, child in ipairs(children) do
    local child_key = job_key(child)
    if redis.call('HGET', child_key, 'status') == 'waiting' then
      local spec = cjson.decode(redis.call('HGET', child_key, 'spec'))
      redis.call('HSET', child_key, 'status', 'queued', 'queued_at', now)
      redis.call('ZADD', prefix .. ':unpublished:' .. spec.model, now, child)
      table.insert(released, child)
    end
  end
  if #children > 0 then redis.call('DEL', key) end
  return released
end

-- Every waiting descendant of a job that did not succeed fails with ``reason``.
local function fail_descendants(id, reason)
  local failed = {}
  local pending = {id}
  while #pending > 0 do
    local key = prefix .. ':children:' .. table.remove(pending)
    for _, child in ipairs(redis.call('SMEMBERS', key)) do
      local status = redis.call('HGET', job_key(child), 'status')
      if status and not terminal[status] then
        redis.call('HSET', job_key(child), 'status', 'failed', 'finished_at', now,
                   'error', reason, 'error_code', 'parent_failed')
        table.insert(failed, child)
        table.insert(pending, child)
        ended(child)
      end
    end
    redis.call('DEL', key)
  end
  return failed
end

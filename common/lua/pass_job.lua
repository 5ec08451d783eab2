-- KEYS: job. ARGV: model, worker id, prefix, now, pass deadline, job id.
-- Passes a queued job, never passed before, to an idle live worker (not this one) that
-- holds every adapter it names: the peer leaves the idle set as it is picked, so two
-- workers never pass two jobs to it; the job records whom it was passed to, once, and
-- its deadline for going back to the shared queue (pass_due). Returns the peer, or false.
local prefix, model, me = ARGV[3], ARGV[1], ARGV[2]
local found = redis.call('HMGET', KEYS[1], 'status', 'adapters', 'passed_to')
local status, adapters, passed_to = found[1], found[2], found[3]
if status ~= 'queued' or not adapters or passed_to then return false end
local idle = prefix .. ':idle:' .. model
local sets = {}
for sha in string.gmatch(adapters, '%S+') do
  table.insert(sets, prefix .. ':warm:' .. model .. ':' .. sha)
end
if #sets == 0 then return false end
table.insert(sets, idle)
for _, peer in ipairs(redis.call('SINTER', unpack(sets))) do
  if peer ~= me then
    redis.call('SREM', idle, peer)
    if redis.call('EXISTS', prefix .. ':worker:' .. peer) == 1 then
      redis.call('HSET', KEYS[1], 'passed_to', peer, 'passed_at', ARGV[4])
      redis.call('ZADD', prefix .. ':passed:' .. model, ARGV[5], ARGV[6])
      return peer
    end
    -- Its record expired: it stopped beating, so it holds nothing any more.
    for i = 1, #sets - 1 do redis.call('SREM', sets[i], peer) end
  end
end
return false

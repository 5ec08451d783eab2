-- KEYS: retry schedule, unpublished set. ARGV: now
-- Moves jobs whose retry is due to the unpublished set (to be published) and returns them.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
for _, id in ipairs(due) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('ZADD', KEYS[2], ARGV[1], id)
end
return due

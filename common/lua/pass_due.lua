-- KEYS: the model's passed set, its unpublished set. ARGV: now, prefix.
-- Jobs passed to a warm worker that has not taken them by their deadline (it got busy,
-- or died) go back: each one still queued joins the unpublished set, so that a crash
-- before its message is sent again cannot lose it. Returns those job ids.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local back = {}
for _, id in ipairs(due) do
  redis.call('ZREM', KEYS[1], id)
  if redis.call('HGET', ARGV[2] .. ':job:' .. id, 'status') == 'queued' then
    redis.call('ZADD', KEYS[2], ARGV[1], id)
    table.insert(back, id)
  end
end
return back

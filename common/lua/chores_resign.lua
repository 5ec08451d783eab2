-- KEYS: the chores lock. ARGV: worker id
-- Gives the lock up only if this worker still holds it.
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0

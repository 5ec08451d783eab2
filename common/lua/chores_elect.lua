-- KEYS: the chores lock. ARGV: worker id, ttl ms
-- Takes the lock if it is free or already this worker's, and (re)starts its expiry.
local holder = redis.call('get', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('set', KEYS[1], ARGV[1], 'px', ARGV[2])
return 1

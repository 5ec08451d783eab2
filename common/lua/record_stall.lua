-- KEYS: job. ARGV: field/value pairs
-- Records the job's stall unless the job has gone (an HSET would leave a record without a spec).
if redis.call('exists', KEYS[1]) == 1 then redis.call('hset', KEYS[1], unpack(ARGV)) end

-- KEYS: batch hash, pending set, rows hash. ARGV: now, ttl. Returns 1 when sealing finished
-- the batch (nothing pending, not reported before); a finished batch's records expire after
-- the retention time (0 keeps them). A job's end settles its batches in the job store's
-- ending script, the other way a batch finishes.
redis.call('HSET', KEYS[1], 'sealed', 1)
if redis.call('SCARD', KEYS[2]) > 0 then return 0 end
if redis.call('HSETNX', KEYS[1], 'finished_at', ARGV[1]) == 0 then return 0 end
if tonumber(ARGV[2]) > 0 then
  for _, key in ipairs(KEYS) do redis.call('EXPIRE', key, ARGV[2]) end
end
return 1

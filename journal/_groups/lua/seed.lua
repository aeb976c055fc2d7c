-- Load a session's durable checkpoint file into the cache, unless someone already did.
-- KEYS[1] group hash ({sid}); ARGV[1] the file's fence, ARGV[2] "1" when parked events
-- wait for a replay, ARGV[3] "<branch>#<sequence>" of a halt or "", then pairs of branch,
-- checkpoint.  -> 1 seeded, 0 already there
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'fence', ARGV[1])
if ARGV[2] == '1' then redis.call('HSET', KEYS[1], 'replay', 'seeded') end
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'halted', ARGV[3]) end
for i = 4, #ARGV, 2 do
  redis.call('HSET', KEYS[1], 'c:' .. ARGV[i], ARGV[i + 1])
end
return 1

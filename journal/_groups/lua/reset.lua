-- Move a session's checkpoints (also backwards), under a new fence that ends any claim;
-- a halted session goes on.
-- KEYS[1] group hash, KEYS[2] claim ({sid}); ARGV pairs of branch, checkpoint.
-- -> the new fence
local fence = redis.call('HINCRBY', KEYS[1], 'fence', 1)
redis.call('DEL', KEYS[2])
redis.call('HDEL', KEYS[1], 'halted')
for i = 1, #ARGV, 2 do
  redis.call('HSET', KEYS[1], 'c:' .. ARGV[i], ARGV[i + 1])
  redis.call('HDEL', KEYS[1], 'a:' .. ARGV[i])
end
return fence

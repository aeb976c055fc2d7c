-- Drop a session's state under our lease: every reader and writer then waits on the
-- rebuild lease (ours) until we commit the new state, or rebuilds from the files if we die.
-- With ARGV[2] = "delete" it also leaves the tombstone and lets the lease go.
-- KEYS[1] state hash, KEYS[2] lease, KEYS[3] tombstone, KEYS[4] want
-- ARGV[1] token, ARGV[2] "clear" | "delete", ARGV[3] tombstone value (unix time)
-- Reply: 1 done, 0 the lease is not ours
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1])
if ARGV[2] == 'delete' then
  redis.call('SET', KEYS[3], ARGV[3])
  redis.call('DEL', KEYS[2], KEYS[4])
end
return 1

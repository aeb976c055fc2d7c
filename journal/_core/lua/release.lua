-- Give the lease back if it is still ours (after an error, or when idle).
-- KEYS[1] lease; ARGV[1] token. Reply: 1 released, 0 not ours.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0

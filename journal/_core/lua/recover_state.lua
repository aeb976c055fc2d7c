-- The state to recover a tail against, only while the lease is still ours: read in one
-- step with the lease check, so a writer whose lease vanished (a Redis restart) never
-- recovers, and never truncates, against someone else's newer state.
-- KEYS[1] state hash, KEYS[2] lease; ARGV[1] token
-- Reply: the state hash as a flat list (HGETALL), or an empty list when the lease is not ours
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return {}
end
return redis.call('HGETALL', KEYS[1])

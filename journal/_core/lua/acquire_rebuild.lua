-- Create-only lease for a rebuild: taken only while the session has no state at all.
-- KEYS[1] state hash, KEYS[2] lease; ARGV[1] token, ARGV[2] lease ms
-- Replies: {"exists"} | {"busy", pttl} | {"ok"}
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {'exists'}
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {'ok'}
end
return {'busy', redis.call('PTTL', KEYS[2])}

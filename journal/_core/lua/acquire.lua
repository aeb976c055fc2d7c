-- Take a free lease without an append: a reader found lines past the committed length
-- (committed by the roll-forward rule, but not yet in Redis) and makes them visible.
-- KEYS[1] state hash, KEYS[2] lease; ARGV[1] token, ARGV[2] lease ms
-- Replies: {"rebuild"} | {"busy"} | {"ok"}
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'rebuild'}
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {'ok'}
end
return {'busy'}

-- Take the writer lease for a lifecycle operation (delete, truncate, archive), waiting in
-- line like a writer: the same fairness as begin.lua. Unlike begin, it works while the
-- session has no state (a delete of a session that Redis forgot).
-- KEYS[1] state hash, KEYS[2] lease, KEYS[3] want; ARGV[1] token, ARGV[2] lease ms,
-- ARGV[3] how long our place in line is kept (one writer lease, as begin.lua: a waiter that
-- gives up must not hold the session for a whole lifecycle lease)
-- Replies: {"busy", pttl} | {"ok", state as a flat HGETALL list}
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[1] then
  redis.call('SET', KEYS[3], ARGV[1], 'NX', 'PX', ARGV[3] or ARGV[2])
  return {'busy', redis.call('PTTL', KEYS[2])}
end
local wanter = redis.call('GET', KEYS[3])
if wanter and wanter ~= ARGV[1] and not holder then
  return {'busy', redis.call('PTTL', KEYS[3])}
end
if wanter == ARGV[1] then
  redis.call('DEL', KEYS[3])
end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
return {'ok', redis.call('HGETALL', KEYS[1])}

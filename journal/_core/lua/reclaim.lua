-- Take back a session's lease to write its deferred caches on close: ours if Redis still
-- holds our token (renewed), or a free one. Never registers as a waiter: closing must not
-- make a busy writer hand its lease over.
-- KEYS[1] state hash, KEYS[2] lease; ARGV[1] token, ARGV[2] lease ms
-- Replies: {"ok", committed_len} | {"busy"} | {"rebuild"}
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'rebuild'}
end
local holder = redis.call('GET', KEYS[2])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
elseif not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {'busy'}
end
return {'ok', tonumber(redis.call('HGET', KEYS[1], 'len') or '0')}

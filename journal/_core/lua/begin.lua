-- Begin an append: check the sequence and take the writer lease, atomically.
-- KEYS[1] state hash ("len", "h:<branch>"), KEYS[2] lease, KEYS[3] want
-- ARGV[1] token, ARGV[2] lease ms, ARGV[3] branch, ARGV[4] first sequence of the append
-- Replies: {"rebuild"} | {"busy", pttl} | {"conflict", head} | {"ok", committed_len, head}
--
-- Fairness: a writer that finds the lease busy registers in "want" (first come; it expires
-- with the lease length). The holder's next commit then lets the lease go, and everyone
-- else, the old holder included, waits until the registered writer had its turn.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'rebuild'}
end
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[1] then
  redis.call('SET', KEYS[3], ARGV[1], 'NX', 'PX', ARGV[2])
  return {'busy', redis.call('PTTL', KEYS[2])}
end
local wanter = redis.call('GET', KEYS[3])
if wanter and wanter ~= ARGV[1] and not holder then
  return {'busy', redis.call('PTTL', KEYS[3])}
end
if wanter == ARGV[1] then
  redis.call('DEL', KEYS[3])
end
local head = tonumber(redis.call('HGET', KEYS[1], 'h:' .. ARGV[3]) or '0')
if head + 1 ~= tonumber(ARGV[4]) then
  return {'conflict', head}
end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
return {'ok', tonumber(redis.call('HGET', KEYS[1], 'len') or '0'), head}

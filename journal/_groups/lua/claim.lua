-- Claim a session for one worker of a group, if it has work.
-- KEYS[1] group hash of the session ({sid}): fence, c:<branch> checkpoints, a:<branch> attempts
-- KEYS[2] claim string ({sid}): "<fence>:<worker>" with a PX expiry
-- KEYS[3] the journal's state hash of the session ({sid}): h:<branch> heads
-- ARGV[1] worker id, ARGV[2] claim_ms, ARGV[3] "1": claim even without pending work
-- -> {"seed"} (cache empty: load the checkpoint file first), {"busy", holder}, {"halted"},
--    {"nostate"} (journal state missing: rebuild it first), {"idle"}, or {"ok", token, fields}
if redis.call('EXISTS', KEYS[1]) == 0 then return {'seed'} end
local holder = redis.call('GET', KEYS[2])
if holder then return {'busy', holder} end
if redis.call('HEXISTS', KEYS[1], 'halted') == 1 then return {'halted'} end
if ARGV[3] ~= '1' then
  local state = redis.call('HGETALL', KEYS[3])
  if #state == 0 then return {'nostate'} end
  local pending = false
  for i = 1, #state, 2 do
    local f = state[i]
    if string.sub(f, 1, 2) == 'h:' then
      local done = tonumber(redis.call('HGET', KEYS[1], 'c:' .. string.sub(f, 3)) or '0')
      if tonumber(state[i + 1]) > done then pending = true break end
    end
  end
  if not pending and redis.call('HEXISTS', KEYS[1], 'replay') == 0 then return {'idle'} end
end
local fence = redis.call('HINCRBY', KEYS[1], 'fence', 1)
local token = fence .. ':' .. ARGV[1]
redis.call('SET', KEYS[2], token, 'PX', ARGV[2])
return {'ok', token, redis.call('HGETALL', KEYS[1])}

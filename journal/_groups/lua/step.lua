-- One fenced step of a claim holder: ack an event, mark the start of the next delivery,
-- and extend the claim; any part may be empty (a plain extend passes "" for both).
-- KEYS[1] group hash ({sid}), KEYS[2] claim ({sid})
-- ARGV[1] token, ARGV[2] claim_ms, ARGV[3] ack branch or "", ARGV[4] ack sequence,
-- ARGV[5] mark branch or "", ARGV[6] mark sequence,
-- ARGV[7] optional: the replay counter the holder has fully served (cleared if unchanged)
-- -> {0} the claim is not ours (expired, taken, reset, Redis restarted), or {1, attempt}
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return {0} end
if ARGV[3] ~= '' then
  local field = 'c:' .. ARGV[3]
  local seq = tonumber(ARGV[4])
  -- never backwards: a checkpoint only moves back by a reset, which takes a new fence
  if seq > tonumber(redis.call('HGET', KEYS[1], field) or '0') then
    redis.call('HSET', KEYS[1], field, ARGV[4])
  end
  redis.call('HDEL', KEYS[1], 'a:' .. ARGV[3])
end
local attempt = 0
if ARGV[5] ~= '' then
  -- attempts survive the claim: a crash mid-handler makes the next holder's delivery n + 1
  local field = 'a:' .. ARGV[5]
  local prev = redis.call('HGET', KEYS[1], field)
  attempt = 1
  if prev then
    local seq, n = string.match(prev, '^(%d+):(%d+)$')
    if seq == ARGV[6] then attempt = tonumber(n) + 1 end
  end
  redis.call('HSET', KEYS[1], field, ARGV[6] .. ':' .. attempt)
end
if ARGV[7] and ARGV[7] ~= '' and redis.call('HGET', KEYS[1], 'replay') == ARGV[7] then
  redis.call('HDEL', KEYS[1], 'replay')
end
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return {1, attempt}

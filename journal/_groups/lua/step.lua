-- One fenced step of a claim holder: commit the acks made since the last step, mark the
-- start of the next delivery, and extend the claim; any part may be empty (a plain extend
-- passes "" for the mark and no acks).
-- KEYS[1] group hash ({sid}), KEYS[2] claim ({sid})
-- ARGV[1] token, ARGV[2] claim_ms, ARGV[3] mark branch or "", ARGV[4] mark sequence,
-- ARGV[5] the replay counter the holder has fully served (cleared if unchanged) or "",
-- then pairs of ack branch, acked sequence (the last acked event of that branch)
-- -> {0} the claim is not ours (expired, taken, reset, Redis restarted), or {1, attempt}
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return {0} end
for i = 6, #ARGV, 2 do
  local field = 'c:' .. ARGV[i]
  local seq = tonumber(ARGV[i + 1])
  -- never backwards: a checkpoint only moves back by a reset, which takes a new fence
  if seq > tonumber(redis.call('HGET', KEYS[1], field) or '0') then
    redis.call('HSET', KEYS[1], field, ARGV[i + 1])
  end
  -- the attempt mark goes with the acked event; a mark past it (a nacked event) stays
  local mark = redis.call('HGET', KEYS[1], 'a:' .. ARGV[i])
  if mark and tonumber(string.match(mark, '^(%d+):')) <= seq then
    redis.call('HDEL', KEYS[1], 'a:' .. ARGV[i])
  end
end
local attempt = 0
if ARGV[3] ~= '' then
  -- attempts survive the claim: a crash mid-handler makes the next holder's delivery n + 1
  local field = 'a:' .. ARGV[3]
  local prev = redis.call('HGET', KEYS[1], field)
  attempt = 1
  if prev then
    local seq, n = string.match(prev, '^(%d+):(%d+)$')
    if seq == ARGV[4] then attempt = tonumber(n) + 1 end
  end
  redis.call('HSET', KEYS[1], field, ARGV[4] .. ':' .. attempt)
end
if ARGV[5] ~= '' and redis.call('HGET', KEYS[1], 'replay') == ARGV[5] then
  redis.call('HDEL', KEYS[1], 'replay')
end
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return {1, attempt}

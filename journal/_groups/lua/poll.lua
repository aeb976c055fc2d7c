-- A holder's look at one of its sessions: extend the claim and read the heads.
-- KEYS[1] group hash, KEYS[2] claim, KEYS[3] journal state hash (all {sid})
-- ARGV[1] token, ARGV[2] claim_ms
-- -> {0} not ours any more, or {1, state fields, replay counter or false}
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return {0} end
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return {1, redis.call('HGETALL', KEYS[3]), redis.call('HGET', KEYS[1], 'replay')}

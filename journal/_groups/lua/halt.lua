-- Halt a session (on_poison = "halt"): no worker claims it until a replay or a reset.
-- KEYS[1] group hash, KEYS[2] claim ({sid}); ARGV[1] token, ARGV[2] "<branch>#<sequence>"
-- -> 1, or 0 when the claim is not ours
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'halted', ARGV[2])
return 1

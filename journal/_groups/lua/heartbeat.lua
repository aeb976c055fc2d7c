-- A worker's heartbeat in its group's registry (one slot: {grp:<group>}).
-- KEYS[1] zset worker -> expiry (ms), KEYS[2] hash worker -> sessions held
-- ARGV[1] worker, ARGV[2] ttl_ms, ARGV[3] sessions held, ARGV[4] "1" to leave
-- -> the number of live workers
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[4] == '1' then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
else
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
end
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
for _, w in ipairs(gone) do redis.call('HDEL', KEYS[2], w) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZCARD', KEYS[1])

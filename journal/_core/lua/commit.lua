-- Commit under the lease: set heads and the committed length, publish, keep or release.
-- KEYS[1] state hash, KEYS[2] lease, KEYS[3] channel (declared as a key: same slot in a
-- cluster), KEYS[4] want
-- ARGV[1] token
-- ARGV[2] "0" releases the lease, "" keeps it as it is (the writer goes on, trusting the hold
--         an earlier commit set), otherwise the ms to hold it for (the writer goes on)
-- ARGV[3] committed byte length
-- ARGV[4] "replace" drops the old state first (rebuild), "update" merges
-- ARGV[5] publish command: "PUBLISH", "SPUBLISH" or "" (nothing to announce)
-- ARGV[6] message
-- ARGV[7..] pairs of branch, head
-- Reply: 1 committed (lease kept when asked), 2 committed and released because another
-- writer waits, 0 when the lease is no longer ours (the outcome is unknown to the caller)
-- The lease and the waiter in one call: each redis.call costs more than its work here.
local lease = redis.call('MGET', KEYS[2], KEYS[4])
if lease[1] ~= ARGV[1] then
  return 0
end
if ARGV[4] == 'replace' then
  redis.call('DEL', KEYS[1])
end
-- One HSET for the length and the heads (each redis.call costs more than its work here), in
-- chunks: unpack() is bounded by Lua's stack, and a rebuild passes every branch.
local fields = {'len', ARGV[3]}
for i = 7, #ARGV, 2 do
  fields[#fields + 1] = 'h:' .. ARGV[i]
  fields[#fields + 1] = ARGV[i + 1]
  if #fields >= 1000 then
    redis.call('HSET', KEYS[1], unpack(fields))
    fields = {}
  end
end
if #fields > 0 then
  redis.call('HSET', KEYS[1], unpack(fields))
end
local reply = 1
if ARGV[2] ~= '0' and lease[2] then
  reply = 2
end
if ARGV[2] == '0' or reply == 2 then
  redis.call('DEL', KEYS[2])
elseif ARGV[2] ~= '' then
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
if ARGV[5] ~= '' then
  redis.call(ARGV[5], KEYS[3], ARGV[6])
end
return reply

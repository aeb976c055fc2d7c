-- Delete a session's Redis state, but only while no writer holds its lease: a writer
-- between "begin" and "commit" must never see its state vanish. Used by `journal rebuild`.
-- KEYS: state, lease
if redis.call('EXISTS', KEYS[2]) == 1 then
  return {'busy', redis.call('PTTL', KEYS[2])}
end
local old = redis.call('HGETALL', KEYS[1])
redis.call('DEL', KEYS[1])
return {'ok', old}

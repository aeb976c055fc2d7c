-- Ask the holder (or the next claimer) of a session to redeliver its parked events.
-- KEYS[1] group hash ({sid}) -> the new replay counter, or 0 when the cache is not seeded
-- (the next claimer then finds the requests in the parked log when it seeds).
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
return redis.call('HINCRBY', KEYS[1], 'replay', 1)

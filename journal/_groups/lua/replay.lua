-- Ask the holder (or the next claimer) of a session to redeliver its parked events.
-- KEYS[1] group hash ({sid}) -> the new replay counter
return redis.call('HINCRBY', KEYS[1], 'replay', 1)

-- Give a claim back (balance, close). KEYS[1] claim ({sid}); ARGV[1] token. -> 1 or 0
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0

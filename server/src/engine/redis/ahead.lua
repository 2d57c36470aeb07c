-- How many ready tickets run before this one: its rank in the ready set.
-- KEYS: 1 ticket hash, 2 ready. ARGV: 1 member prefix (priority), 2 id.
local seq = redis.call('HGET', KEYS[1], 'e')
if not seq then
  return 0
end
return redis.call('ZRANK', KEYS[2], ARGV[1] .. string.format('%016x', tonumber(seq)) .. ARGV[2]) or 0

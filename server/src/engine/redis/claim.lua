-- Takes up to N ready tickets off a queue, highest priority first and FIFO
-- within a priority, and parks them as "claiming" until the caller's
-- fenced lease commit (a caller that dies in between leaves them there for
-- the timer pass to put back). Returns, per ticket: id, revision, record,
-- payload.
--
-- KEYS: 1 ready, 2 claiming, 3 the queue's pause. ARGV: 1 N, 2 now (ms),
-- 3 ticket key prefix (the tickets share the queue's hash slot).
--
-- A paused queue gives nothing.
if redis.call('EXISTS', KEYS[3]) == 1 then
  return {}
end
local popped = redis.call('ZPOPMIN', KEYS[1], ARGV[1])
local out = {}
for i = 1, #popped, 2 do
  local id = string.sub(popped[i], 25)
  redis.call('ZADD', KEYS[2], ARGV[2], id)
  local t = redis.call('HMGET', ARGV[3] .. id, 'v', 'd', 'p')
  out[#out + 1] = {id, t[1], t[2], t[3]}
end
return out

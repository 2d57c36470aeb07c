-- One atomic, revision-fenced transition of one ticket and its queue's
-- indexes. Every key lives in the queue's hash slot.
--
-- KEYS: 1 ticket hash, 2 ready, 3 timers, 4 leased, 5 ids, 6 pending count,
--       7 claiming, 8 the ticket's chunks, 9 counts per state, 10 pending
--       tickets by age
-- ARGV: 1 expected revision ("0": the ticket must not exist yet)
--       2 the new record ("": delete the ticket)
--       3.. operations, each a name followed by its arguments:
--         max K LIMIT         refuse with {-2} when counter K >= LIMIT
--         llenmax K LIMIT     refuse with {-3} when list K holds LIMIT items
--         zadd K SCORE M      zrem K M      incr K DELTA      del K
--         rpush K VALUE       field NAME VALUE (on the ticket hash)
--         hincr K FIELD DELTA
--         pub CHANNEL MESSAGE
--         rank K M            return M's rank in sorted set K, after the writes
-- Returns {1, new revision} (plus the rank, when asked and M is in K), or
-- {0, current revision} when the revision did not match (the caller reloads
-- and retries).
local current = redis.call('HGET', KEYS[1], 'v') or '0'
if current ~= ARGV[1] then
  return {0, current}
end
local arity = {max = 2, llenmax = 2, zadd = 3, zrem = 2, incr = 2, del = 1,
               rpush = 2, field = 2, pub = 2, rank = 2, hincr = 3}
local i = 3
while i <= #ARGV do
  local op = ARGV[i]
  if op == 'max' then
    if tonumber(redis.call('GET', KEYS[tonumber(ARGV[i + 1])]) or '0') >= tonumber(ARGV[i + 2]) then
      return {-2}
    end
  elseif op == 'llenmax' then
    if redis.call('LLEN', KEYS[tonumber(ARGV[i + 1])]) >= tonumber(ARGV[i + 2]) then
      return {-3}
    end
  end
  i = i + 1 + arity[op]
end
local revision = tonumber(current) + 1
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
else
  redis.call('HSET', KEYS[1], 'v', revision, 'd', ARGV[2])
end
local rank = false
i = 3
while i <= #ARGV do
  local op = ARGV[i]
  if op == 'zadd' then
    redis.call('ZADD', KEYS[tonumber(ARGV[i + 1])], ARGV[i + 2], ARGV[i + 3])
  elseif op == 'zrem' then
    redis.call('ZREM', KEYS[tonumber(ARGV[i + 1])], ARGV[i + 2])
  elseif op == 'incr' then
    redis.call('INCRBY', KEYS[tonumber(ARGV[i + 1])], ARGV[i + 2])
  elseif op == 'del' then
    redis.call('DEL', KEYS[tonumber(ARGV[i + 1])])
  elseif op == 'rpush' then
    redis.call('RPUSH', KEYS[tonumber(ARGV[i + 1])], ARGV[i + 2])
  elseif op == 'field' then
    redis.call('HSET', KEYS[1], ARGV[i + 1], ARGV[i + 2])
  elseif op == 'hincr' then
    redis.call('HINCRBY', KEYS[tonumber(ARGV[i + 1])], ARGV[i + 2], ARGV[i + 3])
  elseif op == 'pub' then
    redis.call('PUBLISH', ARGV[i + 1], ARGV[i + 2])
  elseif op == 'rank' then
    rank = redis.call('ZRANK', KEYS[tonumber(ARGV[i + 1])], ARGV[i + 2])
  end
  i = i + 1 + arity[op]
end
if rank then
  return {1, revision, rank}
end
return {1, revision}

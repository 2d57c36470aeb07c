-- Takes up to N ready tickets off a queue, highest priority first and FIFO
-- within a priority, and parks them as "claiming" (one member for them all:
-- their ids joined by commas, in order) until the caller's fenced lease
-- commit (a caller that dies in between leaves them there for the timer
-- pass to put back). Returns, per ticket: id, revision, record, payload.
--
-- KEYS: 1 ready, 2 claiming, 3 the queue's pause, 4 its limits, 5 its
-- leased set (one member per RUNNING ticket). ARGV: 1 N, 2 now (ms), 3 ticket key prefix (the
-- tickets share the queue's hash slot).
--
-- A paused queue gives nothing. A limited one gives what its token bucket
-- (rate, burst; tokens and their time kept in the limits hash) and its cap
-- on running tickets (RUNNING plus those being leased) allow, for every
-- replica at once.
if redis.call('EXISTS', KEYS[3]) == 1 then
  return {}
end
local n = tonumber(ARGV[1])
local now = tonumber(ARGV[2])
local limits = redis.call('HMGET', KEYS[4], 'rate', 'burst', 'conc', 'tokens', 'ts')
local rate = tonumber(limits[1]) or 0
local conc = tonumber(limits[3]) or 0
local tokens = 0
local stamp = now
if rate > 0 then
  local size = tonumber(limits[2]) or 0
  if size <= 0 then
    size = math.max(rate, 1)
  end
  tokens = tonumber(limits[4]) or size
  stamp = tonumber(limits[5]) or now
  if now > stamp then
    tokens = math.min(size, tokens + (now - stamp) * rate / 1000)
    stamp = now
  end
  n = math.min(n, math.floor(tokens))
end
if conc > 0 then
  -- Tickets being leased: a claim parks its tickets as one member, their
  -- ids joined by commas (a gateway before issue 21 parked one per member).
  local claiming = 0
  for _, member in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
    local _, commas = string.gsub(member, ',', ',')
    claiming = claiming + 1 + commas
  end
  n = math.min(n, conc - redis.call('ZCARD', KEYS[5]) - claiming)
end
if n <= 0 then
  return {}
end
local popped = redis.call('ZPOPMIN', KEYS[1], n)
if rate > 0 then
  redis.call('HSET', KEYS[4], 'tokens', tostring(tokens - #popped / 2), 'ts', stamp)
end
local out = {}
local ids = {}
for i = 1, #popped, 2 do
  local id = string.sub(popped[i], 25)
  ids[#ids + 1] = id
  local t = redis.call('HMGET', ARGV[3] .. id, 'v', 'd', 'p')
  out[#out + 1] = {id, t[1], t[2], t[3]}
end
if #ids > 0 then
  redis.call('ZADD', KEYS[2], ARGV[2], table.concat(ids, ','))
end
return out

-- Atomic, revision-fenced transitions of one or more tickets of one queue,
-- and the queue's indexes. Every key lives in the queue's hash slot. Each
-- ticket's section is fenced and applied on its own (one that loses its
-- revision race leaves the others be): a batch is many commits in one call.
--
-- KEYS: 1 the first ticket's hash, 2 ready, 3 timers, 4 leased, 5 ids,
--       6 pending count (written by gateways before issue 21; read by none
--       now), 7 claiming, 8 the first ticket's chunks, 9 counts per state,
--       10 pending tickets by age; then, per further ticket j (1-based
--       after the first), its hash at 9 + 2j and its chunks at 10 + 2j.
-- ARGV: 1 the number of sections; then per section:
--       expected revision ("0": the ticket must not exist yet),
--       the new record ("": delete the ticket),
--       the count of operation arguments that follow, then the operations,
--       each a name followed by its arguments:
--         max K LIMIT         refuse with {-2} when sorted set K holds LIMIT
--         llenmax K LIMIT     refuse with {-3} when list K holds LIMIT items
--         zadd K SCORE M      zrem K M      del K
--         rpush K VALUE       field NAME VALUE (on the ticket hash, with the
--                             record's write)
--         hincr K FIELD DELTA
--         pub CHANNEL MESSAGE
--         rank K M            return M's rank in sorted set K, after the writes
--       (K 1 and 8 name the section's own ticket hash and chunks.)
-- Returns one reply per section: {1, new revision} (plus the rank, when
-- asked and M is in K), {0, current revision} when the revision did not
-- match (the caller reloads and retries), {-2} or {-3} when refused.
local arity = {max = 2, llenmax = 2, zadd = 3, zrem = 2, del = 1,
               rpush = 2, field = 2, pub = 2, rank = 2, hincr = 3}

-- Messages already published by this call (message -> channel).
local published = {}

local function commit(ticket, chunks, first, last)
  local function key(k)
    k = tonumber(k)
    if k == 1 then return ticket end
    if k == 8 then return chunks end
    return KEYS[k]
  end
  local current = redis.call('HGET', ticket, 'v') or '0'
  if current ~= ARGV[first] then
    return {0, current}
  end
  local i = first + 3
  while i <= last do
    local op = ARGV[i]
    if op == 'max' then
      if redis.call('ZCARD', key(ARGV[i + 1])) >= tonumber(ARGV[i + 2]) then
        return {-2}
      end
    elseif op == 'llenmax' then
      if redis.call('LLEN', key(ARGV[i + 1])) >= tonumber(ARGV[i + 2]) then
        return {-3}
      end
    end
    i = i + 1 + arity[op]
  end
  local revision = tonumber(current) + 1
  local record = ARGV[first + 1]
  if record == '' then
    redis.call('DEL', ticket)
  else
    -- The record's fields and any `field` operation, in one write.
    local fields = {'v', revision}
    local j = first + 3
    while j <= last do
      if ARGV[j] == 'field' then
        fields[#fields + 1] = ARGV[j + 1]
        fields[#fields + 1] = ARGV[j + 2]
      end
      j = j + 1 + arity[ARGV[j]]
    end
    fields[#fields + 1] = 'd'
    fields[#fields + 1] = record
    redis.call('HSET', ticket, unpack(fields))
  end
  local rank = false
  i = first + 3
  while i <= last do
    local op = ARGV[i]
    if op == 'zadd' then
      redis.call('ZADD', key(ARGV[i + 1]), ARGV[i + 2], ARGV[i + 3])
    elseif op == 'zrem' then
      redis.call('ZREM', key(ARGV[i + 1]), ARGV[i + 2])
    elseif op == 'del' then
      redis.call('DEL', key(ARGV[i + 1]))
    elseif op == 'rpush' then
      redis.call('RPUSH', key(ARGV[i + 1]), ARGV[i + 2])
    elseif op == 'hincr' then
      redis.call('HINCRBY', key(ARGV[i + 1]), ARGV[i + 2], ARGV[i + 3])
    elseif op == 'pub' then
      -- A batch of submits would say "ready" once per ticket: once is
      -- enough (every other message names its ticket).
      if published[ARGV[i + 2]] ~= ARGV[i + 1] then
        published[ARGV[i + 2]] = ARGV[i + 1]
        redis.call('PUBLISH', ARGV[i + 1], ARGV[i + 2])
      end
    elseif op == 'rank' then
      rank = redis.call('ZRANK', key(ARGV[i + 1]), ARGV[i + 2])
    end
    i = i + 1 + arity[op]
  end
  if rank then
    return {1, revision, rank}
  end
  return {1, revision}
end

local replies = {}
local at = 2
for s = 1, tonumber(ARGV[1]) do
  local ticket, chunks = KEYS[1], KEYS[8]
  if s > 1 then
    ticket, chunks = KEYS[9 + 2 * (s - 1)], KEYS[10 + 2 * (s - 1)]
  end
  local last = at + 2 + tonumber(ARGV[at + 2])
  replies[s] = commit(ticket, chunks, at, last)
  at = last + 1
end
return replies

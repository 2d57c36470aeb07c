-- Writes or deletes a schedule if its revision is still the one read.
-- Every schedule key shares the `{schedules}` hash tag (one slot).
-- KEYS: 1 the schedule's hash (v: revision, d: body), 2 ids (a sorted set
--       of every schedule id, score 0, read in lex order), 3 due (a sorted
--       set of ids by next due time, ms).
-- ARGV: 1 "put" or "del", 2 the id; for put: 3 the expected revision
--       ("0": must not exist), 4 the body, 5 the due time in ms ("" none).
-- Returns {1, new revision} when written, {0, current revision} when the
-- revision differs; for del, 1 when it existed, else 0.
if ARGV[1] == 'del' then
  redis.call('ZREM', KEYS[2], ARGV[2])
  redis.call('ZREM', KEYS[3], ARGV[2])
  return redis.call('DEL', KEYS[1])
end
local current = redis.call('HGET', KEYS[1], 'v') or '0'
if current ~= ARGV[3] then
  return {0, tonumber(current)}
end
local revision = tonumber(current) + 1
redis.call('HSET', KEYS[1], 'v', revision, 'd', ARGV[4])
redis.call('ZADD', KEYS[2], 0, ARGV[2])
if ARGV[5] == '' then
  redis.call('ZREM', KEYS[3], ARGV[2])
else
  redis.call('ZADD', KEYS[3], ARGV[5], ARGV[2])
end
return {1, revision}

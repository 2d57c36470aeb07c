-- Adds a replica's statistics to a queue's ring of buckets: one hash whose
-- field `b<slot>` names the bucket a slot holds and `<slot>.<name>` its
-- counts (see `Tally::fields`). A slot taken by a newer bucket is cleared
-- first; counts for a bucket older than the one its slot holds are dropped.
--
-- KEYS: 1 the hash. ARGV: 1 its time to live (s), then per bucket: its
-- number, its slot, N, then N pairs of name and count.
local i = 2
while i <= #ARGV do
  local bucket, slot, n = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local held = redis.call('HGET', KEYS[1], 'b' .. slot)
  local keep = true
  if held ~= bucket then
    if held and tonumber(held) > tonumber(bucket) then
      keep = false
    else
      local prefix = slot .. '.'
      for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
        if string.sub(field, 1, #prefix) == prefix then
          redis.call('HDEL', KEYS[1], field)
        end
      end
      redis.call('HSET', KEYS[1], 'b' .. slot, bucket)
    end
  end
  if keep then
    for j = 1, n do
      redis.call('HINCRBY', KEYS[1], slot .. '.' .. ARGV[i + 1 + 2 * j], ARGV[i + 2 + 2 * j])
    end
  end
  i = i + 3 + 2 * n
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1

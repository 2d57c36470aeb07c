-- A queue's statistics buckets that hold anything, in one round trip (most
-- of the five-minute window's 21 buckets are empty on a quiet queue).
-- KEYS: the buckets' hashes, oldest first. Returns position (1-based),
-- then the hash's fields and values flat, for each non-empty one.
local out = {}
for i, key in ipairs(KEYS) do
  local fields = redis.call('HGETALL', key)
  if #fields > 0 then
    out[#out + 1] = i
    out[#out + 1] = fields
  end
end
return out

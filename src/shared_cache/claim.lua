-- Shared cache, asked by a gateway's flight before it fetches a key (design/fleet.md §3.3).
-- KEYS[1] entry  KEYS[2] the pair's generation  KEYS[3] the entry's fill lock
-- ARGV[1] ms an entry stays fresh (ttl)  ARGV[2] lock token  ARGV[3] lock ttl, ms
-- Reply: {1, generation, value, pttl_ms}  a fresh entry of the current generation
--        {2, generation}                  no such entry; the caller holds the fill lock
--        {3, generation, lock_pttl_ms}    no such entry; another gateway holds the fill lock
-- An entry is `v1 <generation> <status> <hard ttl ms>\n<body>`; its age is its hard ttl minus
-- its PTTL, so no gateway's clock is involved.
local generation = tonumber(redis.call('GET', KEYS[2]) or '0')
local value = redis.call('GET', KEYS[1])
if value then
  local stored, hard = string.match(value, '^v1 (%d+) %d+ (%d+)\n')
  if stored and tonumber(stored) == generation then
    local pttl = redis.call('PTTL', KEYS[1])
    if pttl > 0 and tonumber(hard) - pttl < tonumber(ARGV[1]) then
      return {1, generation, value, pttl}
    end
  end
end
if redis.call('SET', KEYS[3], ARGV[2], 'NX', 'PX', ARGV[3]) then
  return {2, generation}
end
return {3, generation, redis.call('PTTL', KEYS[3])}

-- Shared cache: a fetch's outcome (design/fleet.md §3.2-3.3).
-- KEYS[1] entry  KEYS[2] the pair's generation  KEYS[3] the entry's fill lock
-- ARGV[1] generation the fetch started under ('' = unknown)  ARGV[2] entry ('' = nothing to
-- keep)  ARGV[3] its hard ttl, ms  ARGV[4] the fill lock's token ('' = none held)
-- ARGV[5] fill channel  ARGV[6] fill message
-- The entry is kept only if the generation has not moved since the fetch started (a write
-- anywhere since then makes it outdated): the generation is the fencing token, the lock only
-- saves work. Gateways waiting for this fetch are told either way.
-- Cached answers may fill at most half of `maxmemory` (when one is set): the budgets share this
-- Redis, which runs with `noeviction`, and a full Redis would fail every gateway closed.
-- Reply: 1 kept, 0 not (outdated, nothing to keep, or no room).
local kept = 0
if ARGV[2] ~= '' and ARGV[1] ~= ''
    and tonumber(redis.call('GET', KEYS[2]) or '0') == tonumber(ARGV[1]) then
  local memory = redis.call('INFO', 'memory')
  local used = tonumber(string.match(memory, 'used_memory:(%d+)')) or 0
  local most = tonumber(string.match(memory, '\nmaxmemory:(%d+)')) or 0
  if most == 0 or used + #ARGV[2] <= most / 2 then
    redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
    kept = 1
  end
end
if ARGV[4] ~= '' and redis.call('GET', KEYS[3]) == ARGV[4] then
  redis.call('DEL', KEYS[3])
end
redis.call('PUBLISH', ARGV[5], ARGV[6])
return kept

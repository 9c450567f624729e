-- Fleet membership: one gateway's heartbeat for one SDKAppID (design/fleet.md §4.2, §4.6).
-- KEYS[1] the app's members (sorted set: gateway id -> last heartbeat, ms on Redis's clock)
-- ARGV[1] this gateway's id  ARGV[2] suspect after, ms  ARGV[3] forget after, ms
-- ARGV[4] 1 to leave (a gateway shutting down), else 0
-- Reply: {live, suspect}: gateways heard from within `suspect after`, and those heard from
-- within `forget after` but not since `suspect after`.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local suspect_after, forget_after = tonumber(ARGV[2]), tonumber(ARGV[3])
if ARGV[4] == '1' then
  redis.call('ZREM', KEYS[1], ARGV[1])
else
  redis.call('ZADD', KEYS[1], now, ARGV[1])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - forget_after))
redis.call('PEXPIRE', KEYS[1], 2 * forget_after)
local live = redis.call('ZCOUNT', KEYS[1], now - suspect_after, '+inf')
return {live, redis.call('ZCARD', KEYS[1]) - live}

-- Fleet membership: one gateway's heartbeat for one SDKAppID (design/fleet.md §4.2, §4.6).
-- KEYS[1] the app's members (sorted set: gateway id -> last heartbeat, ms on Redis's clock)
-- ARGV[1] this gateway's id  ARGV[2] suspect after, ms  ARGV[3] forget after, ms
-- ARGV[4] 'beat', 'probe' (count only: learn Redis's clock, record nothing) or 'leave'
-- ARGV[5] a beat's fence, ms on Redis's clock: a beat that runs later (it waited in a queue,
--         a slow link, a paused Redis) is not recorded, so Redis never hears this gateway
--         later than it could know
-- Reply: {live, suspect, now_ms, recorded}: gateways heard from within `suspect after`, those
-- heard from within `forget after` but not since, Redis's now, 1 if this beat was recorded.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local suspect_after, forget_after = tonumber(ARGV[2]), tonumber(ARGV[3])
local recorded = 0
if ARGV[4] == 'leave' then
  redis.call('ZREM', KEYS[1], ARGV[1])
elseif ARGV[4] == 'beat' and now <= tonumber(ARGV[5]) then
  redis.call('ZADD', KEYS[1], now, ARGV[1])
  recorded = 1
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - forget_after))
redis.call('PEXPIRE', KEYS[1], 2 * forget_after)
local live = redis.call('ZCOUNT', KEYS[1], now - suspect_after, '+inf')
return {live, redis.call('ZCARD', KEYS[1]) - live, now, recorded}

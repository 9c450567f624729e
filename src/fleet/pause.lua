-- Pauses one (SDKAppID, command) budget, or every budget of the app, for the whole fleet on
-- Redis's clock (design/fleet.md §4.3, "Pause script"): the pause key holds the latest
-- blocked-until, and each affected rate key's TAT moves to max(tat, until) + tau, so that the
-- first slot after the pause comes after every slot already granted, and without a burst.
-- Then it tells every gateway on the app's `ctl` channel, so that they void the slots they
-- hold (a gateway that misses the message still cannot go past the moved TAT).
--
-- KEYS[1] the pause key (command pause, app pause or lockout)   KEYS[2..n] affected rate keys
-- ARGV[1] pause_us   ARGV[2] the app's ctl channel   ARGV[3] the sender's tag (reason and id)
-- ARGV[i + 2] tau_us of KEYS[i] for i >= 2
-- Published: `<pause key> <µs left> <tag>`.   Reply: the blocked-until in force, µs.
local pause = tonumber(ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local untl = now + pause
local current = tonumber(redis.call('GET', KEYS[1]) or 0)
if untl > current then
  redis.call('SET', KEYS[1], string.format('%d', untl), 'PX', math.floor(pause / 1000) + 1000)
else
  untl = current
end
for i = 2, #KEYS do
  -- max(tat, until + tau): repeated signals for one pause do not push it further each time.
  local tat = math.max(tonumber(redis.call('GET', KEYS[i]) or 0), untl + tonumber(ARGV[i + 2]))
  redis.call('SET', KEYS[i], string.format('%d', tat), 'PX', math.floor((tat - now) / 1000) + 1000)
end
redis.call('PUBLISH', ARGV[2], string.format('%s %d %s', KEYS[1], untl - now, ARGV[3]))
return string.format('%d', untl)

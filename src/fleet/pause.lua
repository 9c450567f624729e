-- Pauses one (SDKAppID, command) budget, or every budget of the app, for the whole fleet on
-- Redis's clock (design/fleet.md §4.3, "Pause script"): the pause key holds the latest
-- blocked-until, and each affected rate key's TAT moves to max(tat, until) + tau, so that the
-- first slot after the pause comes after every slot already granted, and without a burst.
--
-- KEYS[1] the pause key (command pause, app pause or lockout)   KEYS[2..n] affected rate keys
-- ARGV[1] pause_us   ARGV[i + 1] tau_us of KEYS[i] for i >= 2
-- Reply: the blocked-until now in force, µs on Redis's clock.
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
  local tat = math.max(tonumber(redis.call('GET', KEYS[i]) or 0), untl + tonumber(ARGV[i]))
  redis.call('SET', KEYS[i], string.format('%d', tat), 'PX', math.floor((tat - now) / 1000) + 1000)
end
return string.format('%d', untl)

-- Reserves up to `want` consecutive GCRA slots of one (SDKAppID, command) budget on Redis's
-- clock (design/fleet.md §4.3): the same recurrence as the local throttle's `Budget::reserve`,
--   slot = max(now, tat - tau, blocked);  tat = max(tat, slot) + T
-- so every gateway sharing this Redis draws from one timeline, and no sliding second holds
-- more than burst + rate slots. Runs on Lua 5.1 (Redis, Valkey) and 5.4 (Dragonfly): integer
-- microseconds stay below 2^53.
--
-- KEYS[1] rate key (the TAT)   KEYS[2] command pause   KEYS[3] app pause   KEYS[4] app lockout
-- KEYS[5] the app's members (members.lua)   KEYS[6] the app's epoch (set on first use)
-- ARGV[1] T_us (emission interval)   ARGV[2] tau_us (burst tolerance)   ARGV[3] max_wait_us
-- ARGV[4] want (0..64)   ARGV[5] debt (calls made without Redis's accounting, charged first;
--         never past now + 1 s + tau)
-- ARGV[6] least (1..want): grant nothing unless at least this many slots are within max_wait,
--         so gateways competing for a full timeline take whole batches, not fragments
-- ARGV[7] expected replicas (0 or 1: no lease guard)   ARGV[8] suspect after, ms
-- ARGV[9] forget after, ms
-- Reply: {granted, retry_after_us, blocked_for_us, now_us, offset_1_us, ..., offset_n_us}
-- where offsets are after Redis's `now` (the caller never compares clocks with Redis).
local T, tau = tonumber(ARGV[1]), tonumber(ARGV[2])
local max_wait, want, debt = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local least = tonumber(ARGV[6])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
-- Lease guard (design/fleet.md §4.5): a gateway cut off from Redis may, once every other
-- gateway counts it a suspect, call on its own at 1/replicas of the rate; so while members
-- are suspects the timeline runs slower by their shares. After Redis lost its state (no
-- epoch) the missing members are counted suspects for `forget after`: one may be cut off.
local replicas = tonumber(ARGV[7] or 0)
if replicas > 1 then
  local now_ms = math.floor(now / 1000)
  local suspect_after, forget_after = tonumber(ARGV[8]), tonumber(ARGV[9])
  local live = redis.call('ZCOUNT', KEYS[5], now_ms - suspect_after, '+inf')
  local suspects = redis.call('ZCOUNT', KEYS[5], now_ms - forget_after,
    '(' .. (now_ms - suspect_after))
  local epoch = tonumber(redis.call('GET', KEYS[6]) or 0)
  if epoch == 0 then
    redis.call('SET', KEYS[6], now_ms)
    epoch = now_ms
  end
  if now_ms < epoch + forget_after then
    suspects = math.max(suspects, replicas - live)
  end
  suspects = math.min(math.max(suspects, 0), replicas - 1)
  T = math.ceil(T * replicas / (replicas - suspects))
end
local tat = tonumber(redis.call('GET', KEYS[1]) or 0)
if tat < now then tat = now end
local blocked = math.max(tonumber(redis.call('GET', KEYS[2]) or 0),
  tonumber(redis.call('GET', KEYS[3]) or 0), tonumber(redis.call('GET', KEYS[4]) or 0))
-- Re-charges add up when a reply is lost after the script ran (a slow Redis: the gateway
-- charges the same calls again with its next call). No second of the fleet's calls needs the
-- timeline more than a second plus the burst ahead, so a charge never pushes it further: a
-- slow spell cannot block the fleet for longer than a second after it ends.
tat = math.min(tat + debt * T, math.max(tat, now + 1000000 + tau))
local saved_tat = tat
local offsets, granted, retry = {}, 0, 0
for _ = 1, want do
  local slot = math.max(now, tat - tau, blocked)
  if slot - now > max_wait then
    retry = slot - now
    break
  end
  tat = math.max(tat, slot) + T
  granted = granted + 1
  offsets[granted] = slot - now
end
if granted > 0 and granted < least then
  -- Not a whole batch yet: take nothing; the next free slot is the first of these.
  retry = offsets[1]
  granted = 0
  tat = saved_tat
end
if granted > 0 or debt > 0 then
  redis.call('SET', KEYS[1], string.format('%d', tat), 'PX', math.floor((tat - now) / 1000) + 1000)
end
local reply = {granted, retry, math.max(blocked - now, 0), string.format('%d', now)}
for i = 1, granted do reply[4 + i] = offsets[i] end
return reply

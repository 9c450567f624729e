-- Shared cache: a write made every answer of one (app, command) outdated (design/fleet.md §3.4).
-- KEYS[1] the pair's generation  ARGV[1] invalidation channel  ARGV[2] message
-- Entries carry the generation they were stored under, so bumping it retires them all at
-- once; the message tells every gateway to drop its own copies. Reply: the new generation.
local generation = redis.call('INCR', KEYS[1])
redis.call('PUBLISH', ARGV[1], ARGV[2])
return generation

"""The Lua scripts of the fair lock (fair_lock.py explains the design).

Keys of one lock, all sharing a hash slot:
  owner    "<waiter> <token>", with the lease as its PX expiry
  queue    ZSET waiter -> ticket (arrival order)
  alive    ZSET waiter -> time (ms) after which the waiter counts as dead
  tickets  the ticket counter
  fence    the last fencing token granted (outlives the rest, see ACQUIRE)

Every script is safe to run twice with the same arguments (the client retries
a command once after a lost connection): a waiter that already won gets its
token back, a renewal or release by a non-owner does nothing.

Numbers: Lua numbers are doubles; tokens (microseconds since the epoch,
~1.8e15) stay exact below 2^53, and are written with %.0f because Lua's
tostring would print them in exponent form.
"""

from __future__ import annotations

# KEYS: owner, queue, alive, tickets, fence
# ARGV: waiter, lease_ms, waiter_ttl_ms, fence_ttl_ms
# Returns the token (a string) when granted, nil otherwise.
#
# The fencing token is max(last + 1, now in microseconds): strictly above
# every token this key granted, and, because Redis's clock moves on, above
# every token granted before the fence key was lost (expired, FLUSHALL, a
# restart without persistence). That is what lets the stores reject a
# stalled holder's write even after Redis forgot everything.
ACQUIRE = """
local owner, queue, alive, tickets, fence = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local waiter = ARGV[1]
local lease_ms = tonumber(ARGV[2])
local waiter_ttl_ms = tonumber(ARGV[3])
local fence_ttl_ms = tonumber(ARGV[4])

local held = redis.call('GET', owner)
if held then
  local holder, token = string.match(held, '^(%S+) (%d+)$')
  if holder == waiter then
    return token
  end
end

local time = redis.call('TIME')
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)

-- Waiters that stopped polling (their process died) leave the queue.
local dead = redis.call('ZRANGEBYSCORE', alive, '-inf', now_ms, 'LIMIT', 0, 100)
if #dead > 0 then
  redis.call('ZREM', queue, unpack(dead))
  redis.call('ZREM', alive, unpack(dead))
end

if not redis.call('ZSCORE', queue, waiter) then
  redis.call('ZADD', queue, redis.call('INCR', tickets), waiter)
end
redis.call('ZADD', alive, now_ms + waiter_ttl_ms, waiter)
-- The queue disappears on its own once every waiter is gone.
redis.call('PEXPIRE', queue, waiter_ttl_ms)
redis.call('PEXPIRE', alive, waiter_ttl_ms)
redis.call('PEXPIRE', tickets, waiter_ttl_ms)

if held or redis.call('ZRANGE', queue, 0, 0)[1] ~= waiter then
  return nil
end

redis.call('ZREM', queue, waiter)
redis.call('ZREM', alive, waiter)
local now_us = tonumber(time[1]) * 1000000 + tonumber(time[2])
local last = tonumber(redis.call('GET', fence) or '0')
local token = string.format('%.0f', math.max(last + 1, now_us))
redis.call('SET', fence, token, 'PX', fence_ttl_ms)
redis.call('SET', owner, waiter .. ' ' .. token, 'PX', lease_ms)
return token
"""

# KEYS: owner; ARGV: owner value, lease_ms. Returns 1 while still the owner.
RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# KEYS: owner; ARGV: owner value. Deletes the lock only if still its owner.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# KEYS: owner, queue, alive; ARGV: waiter.
# A waiter that gives up leaves the queue; had it been granted the lock in
# the meantime (its answer lost to a cancellation), it hands it back.
LEAVE = """
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
local held = redis.call('GET', KEYS[1])
if held and string.match(held, '^(%S+) ') == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
return 1
"""

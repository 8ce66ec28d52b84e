"""RateLimiter over Redis: one token bucket per tenant, shared by every process.

The whole read-refill-take step is one Lua script, so concurrent callers in
any number of processes never both spend the same token, and it reads the
time from Redis (TIME), so processes whose clocks disagree still refill the
bucket at one rate. A bucket left alone until it would be full again is the
same as no bucket: its key expires then.

Redis down: acquire raises CoordinationUnavailable. What to do then is the
caller's decision (pipeline/admission.py admits the call and logs it: a
limiter outage must not become a full outage). The breaker (breaker.py)
makes that answer immediate after the first failure: the limiter is on
every authenticated call's path, and a stalled Redis would otherwise add
its timeouts to each of them.

The script is not safe to run twice: should redis-py retry it after a lost
reply, the call spends two tokens. A limit errs on the strict side there.
"""

from __future__ import annotations

from collections.abc import Callable

from redis.asyncio import Redis

from adapters.redis.breaker import CircuitBreaker
from adapters.redis.client import DEFAULT_PREFIX
from adapters.redis.errors import coordination_errors
from chat_service.config import RateLimit
from chat_service.ports import RateDecision

# KEYS: bucket; ARGV: rate (tokens/s), burst, cost.
# Returns {allowed (1/0), retry_after seconds (a string: Lua numbers in a
# reply are truncated to integers)}.
_TAKE = """
local rate, burst, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
local saved = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(saved[1]), tonumber(saved[2])
if tokens == nil or at == nil then
  tokens, at = burst, now
end
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local allowed, retry_after = 0, 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
else
  retry_after = (cost - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens),
           'at', string.format('%.6f', now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {allowed, string.format('%.17g', retry_after)}
"""


class RedisRateLimiter:
    """Token bucket per tenant; limits per tenant come from `limit_for`
    (Settings.rate_limit_for), read on every call so that a changed limit
    applies at once."""

    def __init__(
        self,
        redis: Redis,
        limit_for: Callable[[str], RateLimit],
        *,
        prefix: str = DEFAULT_PREFIX,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self._limit_for = limit_for
        self._prefix = prefix
        self._breaker = breaker or CircuitBreaker()
        self._take = redis.register_script(_TAKE)

    async def acquire(self, tenant_id: str, cost: int = 1) -> RateDecision:
        limit = self._limit_for(tenant_id)
        with coordination_errors(f"rate limit of {tenant_id}", self._breaker):
            allowed, retry_after = await self._take(
                keys=[f"{self._prefix}rate:{tenant_id}"],
                args=[repr(float(limit.rate)), limit.burst, cost],
            )
        return RateDecision(allowed=bool(allowed), retry_after=float(retry_after))

"""RateLimiter over Redis: one token bucket per tenant, shared by every process.

The whole read-refill-take step is one Lua script, so concurrent callers in
any number of processes never both spend the same token, and it reads the
time from Redis (TIME), so processes whose clocks disagree still refill the
bucket at one rate. A bucket left alone until it would be full again is the
same as no bucket: its key expires then.

Reservations. The limiter is on every authenticated call's path, and a
round trip to Redis is most of what it costs. A tenant whose rate is high
enough has its tokens taken from the bucket a few at a time (`reservation`:
50 ms of the rate, at most 32 and a quarter of the burst); this process
spends them one call at a time, and only an empty reservation goes back to
Redis (one round trip at a time per tenant: concurrent callers wait for it
and share what it took). Tokens are still only ever spent once, so the
bound is: a process holds at most one reservation of a tenant's tokens
taken but not yet spent, so over any interval a tenant gets at most that
many calls more than the bucket alone would give, per process; and another
process can be refused at most that many tokens early. Held tokens do not
expire (one that did would be lost, a stricter limit), and are spent even
if the tenant's limit was lowered meanwhile (or while Redis is down: then
the calls they cover are limited, and only the next round trip fails). A
tenant whose reservation would be 1 token (below 40/s; the default 100/s
gives 5) goes to Redis on every call, exactly as without reservations.

Redis down: acquire raises CoordinationUnavailable. What to do then is the
caller's decision (pipeline/admission.py admits the call and logs it: a
limiter outage must not become a full outage). The breaker (breaker.py)
makes that answer immediate after the first failure: the limiter is on
every authenticated call's path, and a stalled Redis would otherwise add
its timeouts to each of them. Callers that waited on a failed round trip
get its error too.

The script is not safe to run twice: should redis-py retry it after a lost
reply, the call spends two tokens (or two reservations). A limit errs on
the strict side there.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass

from redis.asyncio import Redis

from adapters.redis import script_runner
from adapters.redis.breaker import CircuitBreaker
from adapters.redis.client import DEFAULT_PREFIX
from adapters.redis.errors import coordination_errors
from chat_service.config import RateLimit
from chat_service.ports import CoordinationUnavailable, RateDecision

# KEYS: bucket; ARGV: rate (tokens/s), burst, cost, want (>= cost).
# Takes `cost` tokens, and up to `want` when the bucket has them.
# Returns {allowed (1/0), retry_after seconds (a string: Lua numbers in a
# reply are truncated to integers), tokens taken}.
_TAKE = """
local rate, burst, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local want = tonumber(ARGV[4])
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
local saved = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(saved[1]), tonumber(saved[2])
if tokens == nil or at == nil then
  tokens, at = burst, now
end
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local allowed, retry_after, taken = 0, 0, 0
if tokens >= cost then
  taken = math.max(cost, math.min(want, math.floor(tokens)))
  tokens = tokens - taken
  allowed = 1
else
  retry_after = (cost - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens),
           'at', string.format('%.6f', now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {allowed, string.format('%.17g', retry_after), taken}
"""

# A reservation: this much of a tenant's rate, in tokens...
RESERVATION_SECONDS = 0.05
# ...but never more than this many, nor more than this part of its burst.
MAX_RESERVATION = 32
_BURST_SHARE = 4

# Past this many tenants with reservations, all are dropped (their tokens
# are lost: the strict side).
_RESERVATIONS_KEPT = 10_000

_ALLOWED = RateDecision(allowed=True)


def reservation(limit: RateLimit, seconds: float = RESERVATION_SECONDS) -> int:
    """How many tokens one round trip takes for a tenant with `limit` (1: no reservations)."""
    return max(
        1, min(MAX_RESERVATION, math.floor(limit.rate * seconds), limit.burst // _BURST_SHARE)
    )


@dataclass(slots=True)
class _Held:
    """A tenant's tokens taken from the bucket and not spent yet."""

    tokens: int = 0
    # The round trip under way for this tenant: its decision, or None when it
    # ended without one (its caller was cancelled; the next waiter tries).
    refill: asyncio.Future[RateDecision | CoordinationUnavailable | None] | None = None


class RedisRateLimiter:
    """Token bucket per tenant; limits per tenant come from `limit_for`
    (Settings.rate_limit_for), read on every call so that a changed limit
    applies at once (to reservations: from the next one)."""

    def __init__(
        self,
        redis: Redis,
        limit_for: Callable[[str], RateLimit],
        *,
        prefix: str = DEFAULT_PREFIX,
        breaker: CircuitBreaker | None = None,
        reservation_seconds: float = RESERVATION_SECONDS,
    ) -> None:
        self._limit_for = limit_for
        self._reservation_seconds = reservation_seconds
        self._prefix = prefix
        self._breaker = breaker or CircuitBreaker()
        self._take = script_runner.for_client(redis).register(_TAKE)
        self._held: dict[str, _Held] = {}
        self._refilling: set[asyncio.Task[None]] = set()  # (held until done)

    def held(self, tenant_id: str) -> int:
        """Tokens of `tenant_id` this process took and has not spent (tests, diagnostics)."""
        held = self._held.get(tenant_id)
        return 0 if held is None else held.tokens

    async def acquire(self, tenant_id: str, cost: int = 1) -> RateDecision:
        limit = self._limit_for(tenant_id)
        want = reservation(limit, self._reservation_seconds)
        held = self._held.get(tenant_id)
        if held is None:
            if want <= cost:
                decision, _ = await self._take_tokens(tenant_id, limit, cost, cost)
                return decision
            if len(self._held) >= _RESERVATIONS_KEPT:
                self._held.clear()
            held = self._held[tenant_id] = _Held()
        while True:
            if held.tokens >= cost:
                held.tokens -= cost
                return _ALLOWED
            if held.refill is None:
                held.refill = asyncio.get_running_loop().create_future()
                # A task of its own: a caller that leaves (its deadline) must
                # not lose what the round trip takes, which is spent anyway.
                refilling = asyncio.create_task(
                    self._refill(tenant_id, held, limit, cost, max(want, cost))
                )
                self._refilling.add(refilling)
                refilling.add_done_callback(self._refilling.discard)
            # A round trip is under way for this tenant: share its outcome.
            outcome = await asyncio.shield(held.refill)
            if isinstance(outcome, CoordinationUnavailable):
                raise CoordinationUnavailable(str(outcome))
            if outcome is not None and not outcome.allowed:
                return outcome

    async def _refill(
        self, tenant_id: str, held: _Held, limit: RateLimit, cost: int, want: int
    ) -> None:
        """Takes up to `want` tokens (at least `cost`) into `held`, and tells
        the callers waiting on `held.refill` how it went."""
        refill = held.refill
        outcome: RateDecision | CoordinationUnavailable | None = None
        try:
            outcome, taken = await self._take_tokens(tenant_id, limit, cost, want)
            if outcome.allowed:
                held.tokens += taken  # before the waiters wake (in this same step)
        except CoordinationUnavailable as error:
            outcome = error
        finally:
            held.refill = None
            if refill is not None and not refill.done():
                refill.set_result(outcome)

    async def _take_tokens(
        self, tenant_id: str, limit: RateLimit, cost: int, want: int
    ) -> tuple[RateDecision, int]:
        with coordination_errors(f"rate limit of {tenant_id}", self._breaker):
            allowed, retry_after, taken = await self._take(
                keys=[f"{self._prefix}rate:{tenant_id}"],
                args=[repr(float(limit.rate)), limit.burst, cost, want],
            )
        if not allowed:
            return RateDecision(allowed=False, retry_after=float(retry_after)), 0
        return _ALLOWED, int(taken)

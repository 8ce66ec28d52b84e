"""The per-tenant token bucket on a real Redis."""

from __future__ import annotations

import asyncio

from adapters.redis.rate_limit import RedisRateLimiter
from chat_service.config import RateLimit
from tests.support.redis import RedisClients


class Limits:
    """limit_for: a default and some tenants' own limits."""

    def __init__(self, default: RateLimit, **per_tenant: RateLimit) -> None:
        self.default = default
        self.per_tenant = per_tenant

    def __call__(self, tenant_id: str) -> RateLimit:
        return self.per_tenant.get(tenant_id, self.default)


def fixed(rate: float, burst: int) -> Limits:
    return Limits(default=RateLimit(rate=rate, burst=burst))


async def test_a_burst_is_allowed_then_refused_with_the_time_to_wait(
    redis_clients: RedisClients, redis_prefix: str
) -> None:
    limiter = RedisRateLimiter(redis_clients(), fixed(rate=1, burst=5), prefix=redis_prefix)
    decisions = [await limiter.acquire("t1") for _ in range(6)]
    assert [d.allowed for d in decisions] == [True] * 5 + [False]
    assert 0.9 < decisions[-1].retry_after <= 1.0


async def test_tokens_come_back_at_the_rate(redis_clients: RedisClients, redis_prefix: str) -> None:
    limiter = RedisRateLimiter(redis_clients(), fixed(rate=20, burst=2), prefix=redis_prefix)
    assert (await limiter.acquire("t1")).allowed
    assert (await limiter.acquire("t1")).allowed
    refused = await limiter.acquire("t1")
    assert not refused.allowed
    await asyncio.sleep(refused.retry_after + 0.01)
    assert (await limiter.acquire("t1")).allowed
    # Refilled up to the burst, never beyond.
    await asyncio.sleep(0.3)
    assert [(await limiter.acquire("t1")).allowed for _ in range(3)] == [True, True, False]


async def test_two_processes_share_one_bucket(
    redis_clients: RedisClients, redis_prefix: str
) -> None:
    limits = fixed(rate=0.001, burst=10)
    a = RedisRateLimiter(redis_clients(), limits, prefix=redis_prefix)
    b = RedisRateLimiter(redis_clients(), limits, prefix=redis_prefix)
    decisions = await asyncio.gather(
        *(limiter.acquire("t1") for _ in range(25) for limiter in (a, b))
    )
    assert sum(d.allowed for d in decisions) == 10


async def test_limits_and_buckets_are_per_tenant(
    redis_clients: RedisClients, redis_prefix: str
) -> None:
    limits = Limits(default=RateLimit(rate=0.001, burst=3), big=RateLimit(rate=0.001, burst=6))
    limiter = RedisRateLimiter(redis_clients(), limits, prefix=redis_prefix)

    async def allowed(tenant: str) -> int:
        return sum([(await limiter.acquire(tenant)).allowed for _ in range(8)])

    assert await allowed("small") == 3
    assert await allowed("big") == 6
    assert await allowed("other") == 3


async def test_a_cost_takes_that_many_tokens(
    redis_clients: RedisClients, redis_prefix: str
) -> None:
    limiter = RedisRateLimiter(redis_clients(), fixed(rate=10, burst=5), prefix=redis_prefix)
    assert (await limiter.acquire("t1", cost=4)).allowed
    refused = await limiter.acquire("t1", cost=4)
    assert not refused.allowed
    assert 0.25 < refused.retry_after <= 0.3  # 3 tokens missing at 10 per second


async def test_an_idle_bucket_expires_once_it_would_be_full(
    redis_clients: RedisClients, redis_prefix: str
) -> None:
    client = redis_clients()
    limiter = RedisRateLimiter(client, fixed(rate=100, burst=10), prefix=redis_prefix)
    await limiter.acquire("t1")
    ttl_ms = await client.pttl(f"{redis_prefix}rate:t1")
    assert 0 < ttl_ms <= 100 + 1000  # burst / rate, plus a second of slack

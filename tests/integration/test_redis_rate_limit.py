"""The per-tenant token bucket on a real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import math

from redis.asyncio import Redis

from adapters.redis.client import connect_redis
from adapters.redis.rate_limit import RedisRateLimiter, reservation
from chat_service.config import RateLimit
from chat_service.ports import CoordinationUnavailable
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


# Reservations (rate_limit.py): a tenant whose rate is high enough takes
# tokens a few at a time. A long reservation window lets a slow rate (no
# token comes back during a test) have them: these counts are exact.
SLOW = 0.001  # tokens per second
LONG_WINDOW = 10_000.0  # seconds of the rate per reservation: 10 tokens


def test_the_reservation_is_a_part_of_the_rate_bounded_by_the_burst() -> None:
    assert reservation(RateLimit(rate=20, burst=40)) == 1  # exact: Redis on every call
    assert reservation(RateLimit(rate=100, burst=200)) == 5  # the defaults: 50 ms of the rate
    assert reservation(RateLimit(rate=1_000_000, burst=1_000_000)) == 32
    assert reservation(RateLimit(rate=1_000_000, burst=8)) == 2


async def stored_tokens(client: Redis, prefix: str, tenant: str) -> int:
    tokens = await client.hget(f"{prefix}rate:{tenant}", "tokens")
    assert tokens is not None
    return math.floor(float(tokens))


async def test_a_reservation_is_taken_from_the_bucket_and_spent_here(
    redis_clients: RedisClients, redis_prefix: str
) -> None:
    client = redis_clients()
    limiter = RedisRateLimiter(
        client, fixed(rate=SLOW, burst=400), prefix=redis_prefix, reservation_seconds=LONG_WINDOW
    )
    assert (await limiter.acquire("t1")).allowed
    assert limiter.held("t1") == 9
    assert await stored_tokens(client, redis_prefix, "t1") == 390
    for _ in range(9):
        assert (await limiter.acquire("t1")).allowed
    # Spent here: Redis was not asked again.
    assert limiter.held("t1") == 0
    assert await stored_tokens(client, redis_prefix, "t1") == 390
    assert (await limiter.acquire("t1")).allowed
    assert limiter.held("t1") == 9
    assert await stored_tokens(client, redis_prefix, "t1") == 380


async def test_concurrent_callers_share_one_round_trip(
    redis_clients: RedisClients, redis_prefix: str
) -> None:
    client = redis_clients()
    limiter = RedisRateLimiter(
        client, fixed(rate=SLOW, burst=400), prefix=redis_prefix, reservation_seconds=LONG_WINDOW
    )
    decisions = await asyncio.gather(*(limiter.acquire("t1") for _ in range(10)))
    assert all(d.allowed for d in decisions)
    # One reservation for all ten, not one each.
    assert await stored_tokens(client, redis_prefix, "t1") == 390
    assert limiter.held("t1") == 0


async def test_reserving_processes_never_spend_a_token_twice(
    redis_clients: RedisClients, redis_prefix: str
) -> None:
    limits = fixed(rate=SLOW, burst=45)
    a, b = (
        RedisRateLimiter(
            redis_clients(), limits, prefix=redis_prefix, reservation_seconds=LONG_WINDOW
        )
        for _ in range(2)
    )
    decisions = await asyncio.gather(
        *(limiter.acquire("t1") for _ in range(30) for limiter in (a, b))
    )
    # Every token of the burst spent once, the last reservation a part one.
    assert sum(d.allowed for d in decisions) == 45
    assert a.held("t1") + b.held("t1") == 0
    refused = [d for d in decisions if not d.allowed]
    assert all(d.retry_after > 0 for d in refused)


async def test_waiters_on_a_failed_round_trip_fail_too(redis_prefix: str) -> None:
    # A Redis nobody listens on: the round trip fails, and every caller that
    # waited for it hears so (admission then lets them in).
    client = connect_redis("redis://127.0.0.1:9", max_connections=4, socket_timeout=0.5)
    try:
        limiter = RedisRateLimiter(
            client,
            fixed(rate=SLOW, burst=400),
            prefix=redis_prefix,
            reservation_seconds=LONG_WINDOW,
        )
        outcomes = await asyncio.gather(
            *(limiter.acquire("t1") for _ in range(5)), return_exceptions=True
        )
        assert all(isinstance(outcome, CoordinationUnavailable) for outcome in outcomes)
        assert limiter.held("t1") == 0
    finally:
        await client.aclose()


async def test_a_caller_that_leaves_during_the_round_trip_loses_no_tokens(
    redis_clients: RedisClients, redis_prefix: str
) -> None:
    # A client's deadline cancels the caller; the round trip it started
    # still takes its reservation, which the next callers spend.
    client = redis_clients()
    limiter = RedisRateLimiter(
        client, fixed(rate=SLOW, burst=400), prefix=redis_prefix, reservation_seconds=LONG_WINDOW
    )
    for _ in range(5):
        leaving = asyncio.create_task(limiter.acquire("t1"))
        await asyncio.sleep(0)  # its round trip is on its way
        leaving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await leaving
    for _ in range(500):  # the round trip ends after its caller left
        if limiter.held("t1"):
            break
        await asyncio.sleep(0.01)

    # One reservation taken (the later callers found it held), none lost.
    assert await stored_tokens(client, redis_prefix, "t1") == 390
    assert limiter.held("t1") == 10
    for _ in range(10):
        assert (await limiter.acquire("t1")).allowed
    assert await stored_tokens(client, redis_prefix, "t1") == 390

"""The circuit breaker in front of a real Redis that stalls (SIGSTOP): one
call pays for finding out, the calls after it skip Redis at once, and Redis
is used again once it answers."""

from __future__ import annotations

import asyncio
import time

import pytest

from adapters.redis.breaker import CircuitBreaker
from adapters.redis.client import connect_redis
from adapters.redis.locks import RedisConversationLocks
from adapters.redis.rate_limit import RedisRateLimiter
from adapters.redis.session_cache import RedisSessionCache
from chat_service.config import RateLimit
from chat_service.domain.errors import ResourceExhausted
from chat_service.pipeline.admission import TenantAdmission
from chat_service.ports import CoordinationUnavailable, RateDecision
from tests.support.redis import RedisClients, RedisServer

# Without the breaker each call costs the socket timeout twice (~2 s).
FAST = 0.2


def three_per_tenant(_tenant: str) -> RateLimit:
    return RateLimit(rate=0.001, burst=3)


async def test_a_stalled_redis_costs_one_slow_call_then_calls_skip_it_until_it_is_back(
    redis_clients: RedisClients, disposable_redis: RedisServer
) -> None:
    # Short socket timeouts: finding out costs 2 x 0.3 s here, not 2 x 1 s.
    client = redis_clients(disposable_redis.url, socket_timeout=0.3)
    breaker = CircuitBreaker(cooldown=0.3)
    limiter = RedisRateLimiter(client, three_per_tenant, breaker=breaker)
    admission = TenantAdmission(limiter)
    sessions = RedisSessionCache(client, breaker=breaker)
    await admission.admit("warm-up")  # a pooled connection, about to stall

    disposable_redis.pause()
    try:
        await admission.admit("t1")  # finds out the slow way, and lets the call in
        for _ in range(20):
            started = time.monotonic()
            await admission.admit("t1")  # fails open without asking Redis
            assert time.monotonic() - started < FAST
        started = time.monotonic()
        with pytest.raises(CoordinationUnavailable):  # a miss, to the caller
            await sessions.get_session("t1", "s1")
        assert time.monotonic() - started < FAST
    finally:
        disposable_redis.resume()

    # After the cooldown a probe reaches Redis, and the limit counts again:
    # a fresh tenant's burst of 3 is spent, the 4th call refused.
    first = await _once_redis_answers(limiter, "t2")
    assert first.allowed
    assert [(await limiter.acquire("t2")).allowed for _ in range(2)] == [True, True]
    with pytest.raises(ResourceExhausted):
        await admission.admit("t2")


async def _once_redis_answers(limiter: RedisRateLimiter, tenant: str) -> RateDecision:
    async with asyncio.timeout(10):
        while True:
            try:
                return await limiter.acquire(tenant)
            except CoordinationUnavailable:
                await asyncio.sleep(0.05)


async def test_one_probe_at_a_time_while_redis_is_still_stalled(
    disposable_redis: RedisServer,
) -> None:
    # Short socket timeouts: a stalled call costs 2 x 0.3 s here, not 2 x 1 s.
    client = connect_redis(disposable_redis.url, max_connections=5, socket_timeout=0.3)
    breaker = CircuitBreaker(cooldown=0)  # every call after a failure may probe
    limiter = RedisRateLimiter(client, three_per_tenant, breaker=breaker)
    await limiter.acquire("warm-up")
    disposable_redis.pause()
    try:
        with pytest.raises(CoordinationUnavailable):
            await limiter.acquire("t1")
        probe = asyncio.create_task(limiter.acquire("t1"))
        await asyncio.sleep(0)  # the probe is under way, stalled
        started = time.monotonic()
        for _ in range(20):
            with pytest.raises(CoordinationUnavailable):
                await limiter.acquire("t1")
        assert time.monotonic() - started < FAST
        with pytest.raises(CoordinationUnavailable):
            await probe
    finally:
        disposable_redis.resume()
        await client.aclose()


async def test_a_busy_connection_pool_does_not_trip_the_breaker(redis_server: RedisServer) -> None:
    client = connect_redis(redis_server.url, max_connections=1, pool_timeout=0.05)
    breaker = CircuitBreaker(cooldown=60)
    limiter = RedisRateLimiter(client, three_per_tenant, prefix="busy-pool:", breaker=breaker)
    try:
        pool = client.connection_pool
        busy = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            with pytest.raises(CoordinationUnavailable):
                await limiter.acquire("t1")
        finally:
            await pool.release(busy)
        # Redis itself was fine: the next call is not skipped.
        assert (await limiter.acquire("t1")).allowed
    finally:
        await client.aclose()


async def test_leaving_a_lock_while_the_breaker_is_open_does_not_wait_for_redis(
    disposable_redis: RedisServer,
) -> None:
    client = connect_redis(disposable_redis.url, max_connections=5, socket_timeout=0.3)
    breaker = CircuitBreaker(cooldown=60)
    locks = RedisConversationLocks(client, breaker=breaker)
    limiter = RedisRateLimiter(client, three_per_tenant, breaker=breaker)
    try:
        async with locks.hold("t1", "c1", timeout=1):
            disposable_redis.pause()
            with pytest.raises(CoordinationUnavailable):
                await limiter.acquire("t1")  # finds Redis stalled
            started = time.monotonic()
        # The release goes on in the background; the lease is the backstop.
        assert time.monotonic() - started < FAST
    finally:
        disposable_redis.resume()
        await client.aclose()

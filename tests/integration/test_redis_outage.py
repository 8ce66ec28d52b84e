"""Redis down: locks, claims, rate limits and the cache fail fast with
CoordinationUnavailable (UNAVAILABLE to callers), and work again, on the
same clients, once Redis is back (and the circuit breaker they share lets
calls through again)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import pytest

from adapters.redis.breaker import CircuitBreaker
from adapters.redis.locks import RedisConversationLocks
from adapters.redis.rate_limit import RedisRateLimiter
from adapters.redis.session_cache import RedisSessionCache
from chat_service.config import RateLimit
from chat_service.ports import CoordinationUnavailable
from tests.support.redis import RedisClients, RedisServer

Operation = Callable[[], Awaitable[object]]


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def operations(
    redis_clients: RedisClients, url: str, breaker: CircuitBreaker | None = None
) -> dict[str, Operation]:
    client = redis_clients(url)
    breaker = breaker or CircuitBreaker()
    locks = RedisConversationLocks(client, breaker=breaker)
    # A rate too low for reservations (rate_limit.py): every call asks Redis.
    limiter = RedisRateLimiter(client, lambda _: RateLimit(rate=20, burst=100), breaker=breaker)
    cache = RedisSessionCache(client, breaker=breaker)

    async def lock() -> None:
        async with locks.hold("t1", "c1", timeout=5):
            pass

    return {
        "lock": lock,
        "rate limit": lambda: limiter.acquire("t1"),
        "session": lambda: cache.get_session("t1", "s1"),
    }


async def test_redis_down_fails_fast_and_recovers(
    redis_clients: RedisClients, disposable_redis: RedisServer
) -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(cooldown=3, clock=clock)
    ops = operations(redis_clients, disposable_redis.url, breaker)
    for op in ops.values():
        await op()  # the pool holds connections that are about to die

    disposable_redis.kill()
    for name, op in ops.items():
        started = time.monotonic()
        with pytest.raises(CoordinationUnavailable):
            await op()
        assert time.monotonic() - started < 1.0, name
    assert breaker.state == "open"

    disposable_redis.start()
    clock.now += 3  # the cooldown is over: the first call probes, and closes it
    for op in ops.values():
        await op()
    assert breaker.state == "closed"


async def test_a_hung_redis_fails_within_the_socket_timeouts(
    redis_clients: RedisClients, disposable_redis: RedisServer
) -> None:
    ops = operations(redis_clients, disposable_redis.url)
    await ops["lock"]()
    disposable_redis.pause()
    try:
        started = time.monotonic()
        with pytest.raises(CoordinationUnavailable):
            await ops["lock"]()
        # One second per attempt, one retry: bounded, well under a lock timeout.
        assert time.monotonic() - started < 3.0
    finally:
        disposable_redis.resume()


async def test_losing_redis_while_holding_a_lock_does_not_fail_the_holder(
    redis_clients: RedisClients, disposable_redis: RedisServer
) -> None:
    locks = RedisConversationLocks(redis_clients(disposable_redis.url))
    done = False
    async with locks.hold("t1", "c1", timeout=1):
        disposable_redis.kill()
        done = True  # the work inside the lock completes...
    # ...and leaving the block does not raise: the release is logged and the
    # lease ends on its own. A successor's writes are fenced by token.
    assert done

"""In-process locks and rate limits."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from adapters.memory.locks import KeyedLocks
from adapters.memory.rate_limit import InProcessRateLimiter
from adapters.memory.session_cache import InProcessSessionCache
from chat_service.config import RateLimit
from chat_service.domain.errors import ResourceExhausted
from chat_service.domain.model import ConversationState
from chat_service.pipeline.admission import TenantAdmission
from chat_service.pipeline.state_cache import StateCacheFeed
from chat_service.ports import (
    ConversationChange,
    CoordinationUnavailable,
    LockTimeout,
    RateDecision,
)
from tests.builders import make_conversation


async def test_waiters_are_served_in_arrival_order() -> None:
    locks = KeyedLocks()
    order: list[int] = []

    async def worker(n: int) -> None:
        async with locks.acquire("k", timeout=5):
            order.append(n)
            await asyncio.sleep(0)

    async with locks.acquire("k", timeout=5):
        tasks = []
        for n in range(20):
            tasks.append(asyncio.create_task(worker(n)))
            await asyncio.sleep(0)  # each task queues before the next starts
    await asyncio.gather(*tasks)

    assert order == list(range(20))
    assert len(locks) == 0  # nothing left behind


async def test_fencing_tokens_grow_per_grant() -> None:
    locks = KeyedLocks()
    tokens = []
    for _ in range(3):
        async with locks.acquire("k", timeout=1) as lease:
            tokens.append(lease.fencing_token)
    assert tokens == sorted(tokens)
    assert len(set(tokens)) == 3


async def test_lock_timeout_and_cleanup_after_it() -> None:
    locks = KeyedLocks()
    async with locks.acquire("k", timeout=1):
        with pytest.raises(LockTimeout):
            async with locks.acquire("k", timeout=0.01):
                pass
    assert len(locks) == 0


async def test_cancelled_waiter_frees_its_place() -> None:
    locks = KeyedLocks()
    async with locks.acquire("k", timeout=1):
        waiter = asyncio.create_task(locks.acquire("k", timeout=5).__aenter__())
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
    async with locks.acquire("k", timeout=0.1):
        pass
    assert len(locks) == 0


async def test_different_keys_do_not_wait_for_each_other() -> None:
    locks = KeyedLocks()
    async with locks.acquire("a", timeout=1), locks.acquire("b", timeout=0.01):
        assert len(locks) == 2


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_token_bucket_allows_the_burst_then_refills() -> None:
    time = FakeTime()
    limiter = InProcessRateLimiter(lambda tenant: RateLimit(rate=2.0, burst=3), clock=time)

    assert [(await limiter.acquire("t")).allowed for _ in range(4)] == [True, True, True, False]
    refused = await limiter.acquire("t")
    assert refused.retry_after == pytest.approx(0.5)
    time.now += 0.5
    assert (await limiter.acquire("t")).allowed
    time.now += 100  # never more than the burst saved up
    assert [(await limiter.acquire("t")).allowed for _ in range(4)] == [True, True, True, False]


async def test_tenants_have_their_own_buckets_and_limits() -> None:
    limits = {"small": RateLimit(rate=1, burst=1)}
    limiter = InProcessRateLimiter(
        lambda tenant: limits.get(tenant, RateLimit(rate=10, burst=10)), clock=FakeTime()
    )

    assert (await limiter.acquire("small")).allowed
    assert not (await limiter.acquire("small")).allowed
    assert all([(await limiter.acquire("big")).allowed for _ in range(10)])


class DownLimiter:
    def __init__(self) -> None:
        self.asked: list[str] = []

    async def acquire(self, tenant_id: str, cost: int = 1) -> RateDecision:
        self.asked.append(tenant_id)
        raise CoordinationUnavailable("redis down")


async def test_admission_lets_calls_through_when_the_limiter_is_down(
    caplog: pytest.LogCaptureFixture,
) -> None:
    limiter = DownLimiter()
    admission = TenantAdmission(limiter)

    for _ in range(3):
        await admission.admit("acme")  # admitted: no ResourceExhausted, no Unavailable

    assert limiter.asked == ["acme"] * 3  # asked every time, not given up on
    warnings = [r for r in caplog.records if "rate limits not enforced" in r.getMessage()]
    assert len(warnings) == 1  # said once, not per call


async def test_admission_refuses_past_the_limit_with_retry_info() -> None:
    limiter = InProcessRateLimiter(lambda tenant: RateLimit(rate=1, burst=1), clock=FakeTime())
    admission = TenantAdmission(limiter)
    await admission.admit("acme")

    with pytest.raises(ResourceExhausted) as refused:
        await admission.admit("acme")
    assert refused.value.reason == "RATE_LIMITED"
    assert refused.value.retry_after == pytest.approx(1.0)


async def test_the_state_cache_keeps_the_newest_version() -> None:
    cache = InProcessSessionCache()
    feed = StateCacheFeed(cache)
    conversation = make_conversation(state=ConversationState(current_intent="first"))
    newer = dataclasses.replace(
        conversation,
        version=conversation.version + 1,
        state=ConversationState(current_intent="second"),
    )

    feed.committed(ConversationChange(newer, expected_version=conversation.version))
    feed.committed(ConversationChange(conversation, expected_version=conversation.version - 1))
    await feed.drain()

    cached = await cache.get_conversation_state(
        conversation.tenant_id, conversation.conversation_id
    )
    assert cached is not None
    assert (cached.version, cached.state.current_intent) == (newer.version, "second")


async def test_sessions_expire_after_their_last_use() -> None:
    time = FakeTime()
    cache = InProcessSessionCache(ttl=10, clock=time)
    await cache.put_session("t", "s", {"conversation_id": "c"})

    time.now += 9
    assert await cache.get_session("t", "s") == {"conversation_id": "c"}  # and refreshed
    time.now += 9
    assert await cache.get_session("t", "s") == {"conversation_id": "c"}
    time.now += 11
    assert await cache.get_session("t", "s") is None

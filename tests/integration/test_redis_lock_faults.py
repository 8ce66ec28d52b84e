"""Conversation locks on a real Redis whose replies are lost on purpose
(tests/support/redis_faults.py): a waiter or holder that fails must not leave
a ghost that blocks the lock for a waiter TTL or a whole lease."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest

from adapters.redis import lock_scripts
from adapters.redis.locks import RedisConversationLocks
from chat_service.ports import CoordinationUnavailable
from tests.support.redis import RedisClients, RedisServer
from tests.support.redis_faults import FaultyRedis, faulty_client

# The default timings: a 10 s lease and a 3 s waiter TTL. A ghost would hold
# the lock that long; the bounds below are far under either.
PROMPTLY = 1.0

FaultyClients = Callable[[], FaultyRedis]


@pytest.fixture
async def faulty_clients(redis_server: RedisServer) -> AsyncIterator[FaultyClients]:
    made: list[FaultyRedis] = []

    def make() -> FaultyRedis:
        client = faulty_client(redis_server.url)
        made.append(client)
        return client

    yield make
    for client in made:
        await client.aclose()


async def _waiting_is(locks: RedisConversationLocks, count: int) -> None:
    # Polled: the queue is in Redis, with nothing to wait on.
    deadline = time.monotonic() + 5
    while await locks.waiting("t1", "c1") != count:
        if time.monotonic() > deadline:
            raise AssertionError(f"never {count} waiting")
        await asyncio.sleep(0.005)


async def test_a_waiter_that_hits_a_redis_error_leaves_the_queue(
    redis_clients: RedisClients, faulty_clients: FaultyClients, redis_prefix: str
) -> None:
    holder = RedisConversationLocks(redis_clients(), prefix=redis_prefix)
    failing_client = faulty_clients()
    failing = RedisConversationLocks(failing_client, prefix=redis_prefix)
    patient = RedisConversationLocks(redis_clients(), prefix=redis_prefix)

    async def wait_then_hold(locks: RedisConversationLocks) -> float:
        async with locks.hold("t1", "c1", timeout=10):
            return time.monotonic()

    async with holder.hold("t1", "c1", timeout=1):
        doomed = asyncio.create_task(wait_then_hold(failing))
        await _waiting_is(holder, 1)  # the failing waiter is first in line
        second = asyncio.create_task(wait_then_hold(patient))
        await _waiting_is(holder, 2)
        failing_client.fail_next(lock_scripts.ACQUIRE)
        with pytest.raises(CoordinationUnavailable):
            await doomed
        released = time.monotonic()
    assert await second - released < PROMPTLY  # not after the ghost's TTL
    assert await holder.waiting("t1", "c1") == 0


async def test_a_lost_grant_reply_does_not_hold_the_lock_for_a_lease(
    redis_clients: RedisClients, faulty_clients: FaultyClients, redis_prefix: str
) -> None:
    failing_client = faulty_clients()
    failing = RedisConversationLocks(failing_client, prefix=redis_prefix)
    other = RedisConversationLocks(redis_clients(), prefix=redis_prefix)

    # Redis grants the lock, the answer never arrives.
    failing_client.fail_next(lock_scripts.ACQUIRE, after_running=True)
    with pytest.raises(CoordinationUnavailable):
        async with failing.hold("t1", "c1", timeout=5):
            pytest.fail("the grant's reply was lost; the holder cannot know it holds")
    assert failing_client.fired == 1

    started = time.monotonic()
    async with other.hold("t1", "c1", timeout=3):
        assert time.monotonic() - started < PROMPTLY


async def test_a_holder_cancelled_during_its_release_still_frees_the_lock(
    redis_clients: RedisClients, faulty_clients: FaultyClients, redis_prefix: str
) -> None:
    holder_client = faulty_clients()
    holder = RedisConversationLocks(holder_client, prefix=redis_prefix)
    other = RedisConversationLocks(redis_clients(), prefix=redis_prefix)
    gate = holder_client.gate_next(lock_scripts.RELEASE)

    async def hold_briefly() -> None:
        async with holder.hold("t1", "c1", timeout=1):
            pass

    task = asyncio.create_task(hold_briefly())
    await gate.reached.wait()  # the work is done, the release is on its way
    task.cancel()  # e.g. the RPC's deadline
    with pytest.raises(asyncio.CancelledError):
        await task
    gate.opened.set()

    started = time.monotonic()
    async with other.hold("t1", "c1", timeout=3):
        assert time.monotonic() - started < PROMPTLY

"""Conversation locks on a real Redis.

Two clients with pools of their own stand for two processes of the service.
"""

from __future__ import annotations

import asyncio
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

import pytest

from adapters.redis.fair_lock import LockTimings
from adapters.redis.locks import RedisConversationLocks
from chat_service.ports import LockTimeout
from tests.support.redis import RedisClients, RedisServer

# A holder that stops renewing: the renewal comes long after the lease.
STALLING = LockTimings(lease=0.3, renew_interval=60)


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


def two_processes(
    redis_clients: RedisClients, prefix: str, timings: LockTimings | None = None
) -> tuple[RedisConversationLocks, RedisConversationLocks]:
    return (
        RedisConversationLocks(redis_clients(), prefix=prefix, timings=timings),
        RedisConversationLocks(redis_clients(), prefix=prefix, timings=timings),
    )


async def test_waiters_from_two_processes_get_the_lock_in_arrival_order(
    redis_clients: RedisClients, redis_prefix: str
) -> None:
    a, b = two_processes(redis_clients, redis_prefix)
    order: list[int] = []

    async def waiter(n: int) -> None:
        async with (a if n % 2 else b).hold("t1", "c1", timeout=20):
            order.append(n)

    async with a.hold("t1", "c1", timeout=1):
        tasks = []
        for n in range(20):
            tasks.append(asyncio.create_task(waiter(n)))
            # The next waiter starts only once this one is queued.
            await eventually(partial(_waiting_is, a, n + 1))
    await asyncio.gather(*tasks)

    assert order == list(range(20))
    assert await a.waiting("t1", "c1") == 0


async def _waiting_is(locks: RedisConversationLocks, count: int) -> bool:
    return await locks.waiting("t1", "c1") == count


async def test_one_holder_at_a_time_with_growing_fencing_tokens(
    redis_clients: RedisClients, redis_prefix: str
) -> None:
    a, b = two_processes(redis_clients, redis_prefix)
    counter = 0
    holders = 0
    tokens: list[int] = []

    async def increment(locks: RedisConversationLocks) -> None:
        nonlocal counter, holders
        for _ in range(2):
            async with locks.hold("t1", "c1", timeout=30) as lease:
                holders += 1
                assert holders == 1
                tokens.append(lease.fencing_token)
                value = counter
                await asyncio.sleep(0.001)  # a write that is not atomic
                counter = value + 1
                holders -= 1

    await asyncio.gather(*(increment(a if n % 2 else b) for n in range(20)))

    assert counter == 40
    assert tokens == sorted(tokens)
    assert len(set(tokens)) == 40


async def test_other_conversations_are_not_blocked(
    redis_clients: RedisClients, redis_prefix: str
) -> None:
    a, b = two_processes(redis_clients, redis_prefix)
    async with (
        a.hold("t1", "c1", timeout=1) as held,
        # Granted at once although t1/c1 is held (a LockTimeout otherwise).
        b.hold("t1", "c2", timeout=0.2) as other_conversation,
        b.hold("t2", "c1", timeout=0.2) as other_tenant,
    ):
        assert len({held.key, other_conversation.key, other_tenant.key}) == 3
        assert await b.waiting("t1", "c2") == await b.waiting("t2", "c1") == 0


async def test_renewal_keeps_the_lock_past_its_lease(
    redis_clients: RedisClients, redis_prefix: str
) -> None:
    a, b = two_processes(redis_clients, redis_prefix, LockTimings(lease=0.3))
    async with a.hold("t1", "c1", timeout=1):
        with pytest.raises(LockTimeout):
            async with b.hold("t1", "c1", timeout=1.0):  # more than three leases
                pass
    async with b.hold("t1", "c1", timeout=1):
        pass


async def test_a_holder_that_stops_renewing_loses_the_lock_to_the_next_waiter(
    redis_clients: RedisClients, redis_prefix: str
) -> None:
    stalled = RedisConversationLocks(redis_clients(), prefix=redis_prefix, timings=STALLING)
    b = RedisConversationLocks(redis_clients(), prefix=redis_prefix)

    async with stalled.hold("t1", "c1", timeout=1) as old:
        started = time.monotonic()
        async with b.hold("t1", "c1", timeout=3) as new:
            waited = time.monotonic() - started
    assert 0.2 < waited < 2  # about one lease
    assert new.fencing_token > old.fencing_token


async def test_a_stalled_holders_late_release_does_not_free_its_successor(
    redis_clients: RedisClients, redis_prefix: str
) -> None:
    stalled = RedisConversationLocks(redis_clients(), prefix=redis_prefix, timings=STALLING)
    b, c = two_processes(redis_clients, redis_prefix)
    successor_holds = asyncio.Event()
    let_go = asyncio.Event()

    async def successor() -> None:
        async with b.hold("t1", "c1", timeout=3):
            successor_holds.set()
            await let_go.wait()

    async with stalled.hold("t1", "c1", timeout=1):
        task = asyncio.create_task(successor())
        await asyncio.wait_for(successor_holds.wait(), 3)
    # The stalled holder has left its block (and released): b still holds.
    assert not await _try_hold(c, timeout=0.3)
    let_go.set()
    await task
    assert await _try_hold(c, timeout=1)


async def _try_hold(locks: RedisConversationLocks, *, timeout: float) -> bool:
    try:
        async with locks.hold("t1", "c1", timeout=timeout):
            return True
    except LockTimeout:
        return False


async def test_lock_timeout_and_the_waiter_leaves_the_queue(
    redis_clients: RedisClients, redis_prefix: str
) -> None:
    a, b = two_processes(redis_clients, redis_prefix)
    async with a.hold("t1", "c1", timeout=1):
        started = time.monotonic()
        with pytest.raises(LockTimeout):
            async with b.hold("t1", "c1", timeout=0.2):
                pass
        assert 0.2 <= time.monotonic() - started < 1.0
        assert await a.waiting("t1", "c1") == 0


async def test_a_waiter_that_timed_out_does_not_hold_up_the_next_one(
    redis_clients: RedisClients, redis_prefix: str
) -> None:
    # waiter_ttl is long: only leaving the queue can let the next one through.
    a, b = two_processes(redis_clients, redis_prefix, LockTimings(waiter_ttl=30))
    holding = a.hold("t1", "c1", timeout=1)
    await holding.__aenter__()
    quitter = asyncio.create_task(_try_hold(b, timeout=0.3))
    await eventually(partial(_waiting_is, a, 1))
    patient = asyncio.create_task(_acquired_at(b))
    await eventually(partial(_waiting_is, a, 2))
    assert not await quitter
    assert await a.waiting("t1", "c1") == 1

    released = time.monotonic()
    await holding.__aexit__(None, None, None)
    assert await patient - released < 0.5


async def _acquired_at(locks: RedisConversationLocks) -> float:
    async with locks.hold("t1", "c1", timeout=10):
        return time.monotonic()


async def test_a_waiter_whose_process_died_stops_blocking_the_queue(
    redis_clients: RedisClients, redis_server: RedisServer, redis_prefix: str
) -> None:
    timings = LockTimings(waiter_ttl=0.5)
    a, b = two_processes(redis_clients, redis_prefix, timings)
    holding = a.hold("t1", "c1", timeout=1)
    await holding.__aenter__()
    # A real process queues for the lock, then is killed (no cleanup runs).
    doomed = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _QUEUE_FOREVER,
        redis_server.url,
        redis_prefix,
        stdout=asyncio.subprocess.PIPE,
        cwd=Path(__file__).parents[2],
    )
    try:
        assert doomed.stdout is not None
        assert await doomed.stdout.readline() == b"queued\n"
    finally:
        doomed.kill()
        await doomed.wait()
    patient = asyncio.create_task(_acquired_at(b))
    await eventually(partial(_waiting_is, a, 2))

    released = time.monotonic()
    await holding.__aexit__(None, None, None)
    waited = await patient - released
    assert waited < 1.5  # about waiter_ttl, not forever
    assert await a.waiting("t1", "c1") == 0


_QUEUE_FOREVER = textwrap.dedent(
    """
    import asyncio, sys
    from adapters.redis.client import connect_redis
    from adapters.redis.fair_lock import LockTimings
    from adapters.redis.locks import RedisConversationLocks

    async def main():
        locks = RedisConversationLocks(
            connect_redis(sys.argv[1], max_connections=2),
            prefix=sys.argv[2],
            timings=LockTimings(waiter_ttl=0.5),
        )
        waiting = asyncio.create_task(locks.hold("t1", "c1", timeout=60).__aenter__())
        while await locks.waiting("t1", "c1") < 1:
            await asyncio.sleep(0.005)
        print("queued", flush=True)
        await waiting

    asyncio.run(main())
    """
)


async def test_fencing_tokens_keep_growing_across_a_redis_restart(
    redis_clients: RedisClients, disposable_redis: RedisServer
) -> None:
    locks = RedisConversationLocks(redis_clients(disposable_redis.url))
    async with locks.hold("t1", "c1", timeout=1) as first:
        pass
    async with locks.hold("t1", "c1", timeout=1) as second:
        pass
    disposable_redis.restart()  # no persistence: every key is gone
    async with locks.hold("t1", "c1", timeout=1) as third:
        pass
    assert first.fencing_token < second.fencing_token < third.fencing_token

"""The session cache and the conversation-state cache on a real Redis."""

from __future__ import annotations

import asyncio

from adapters.redis.session_cache import RedisSessionCache
from chat_service.domain.model import ConversationState
from chat_service.ports import CachedState
from tests.support.redis import RedisClients


async def test_a_session_round_trips_and_each_read_restarts_its_ttl(
    redis_clients: RedisClients, redis_prefix: str
) -> None:
    cache = RedisSessionCache(redis_clients(), prefix=redis_prefix, session_ttl=0.4)
    session = {"user": "u1", "cart": [1, 2], "name": "Zoë"}
    await cache.put_session("t1", "s1", session)
    assert await cache.get_session("t1", "s1") == session
    assert await cache.get_session("t2", "s1") is None  # another tenant's

    for _ in range(3):  # 0.75 s in all, well past one TTL
        await asyncio.sleep(0.25)
        assert await cache.get_session("t1", "s1") == session
    await asyncio.sleep(0.5)
    assert await cache.get_session("t1", "s1") is None


async def test_a_conversation_state_is_never_replaced_by_an_older_one(
    redis_clients: RedisClients, redis_prefix: str
) -> None:
    cache = RedisSessionCache(redis_clients(), prefix=redis_prefix)
    newer = ConversationState(current_intent="pay", slots={"amount": 10})
    older = ConversationState(current_intent="greet")

    assert await cache.put_conversation_state("t1", "c1", newer, version=3)
    assert not await cache.put_conversation_state("t1", "c1", older, version=2)
    assert await cache.get_conversation_state("t1", "c1") == CachedState(3, newer)
    # The same version again (a retried put) is accepted.
    assert await cache.put_conversation_state("t1", "c1", newer, version=3)
    assert await cache.get_conversation_state("t2", "c1") is None


async def test_a_conversation_state_expires(redis_clients: RedisClients, redis_prefix: str) -> None:
    cache = RedisSessionCache(redis_clients(), prefix=redis_prefix, state_ttl=0.2)
    await cache.put_conversation_state("t1", "c1", ConversationState(), version=1)
    assert await cache.get_conversation_state("t1", "c1") is not None
    await asyncio.sleep(0.3)
    assert await cache.get_conversation_state("t1", "c1") is None


async def test_entries_the_cache_cannot_read_are_misses(
    redis_clients: RedisClients, redis_prefix: str
) -> None:
    # Written by another version of the service, or by hand: never an error
    # (INTERNAL) to the caller, who would only have wanted a cache hit.
    client = redis_clients()
    cache = RedisSessionCache(client, prefix=redis_prefix)
    await client.set(f"{redis_prefix}session:t1/garbled", b"\xff{not json")
    await client.set(f"{redis_prefix}session:t1/a-list", b"[1, 2]")
    await client.hset(f"{redis_prefix}state:t1/garbled", mapping={"version": "x", "state": "{"})
    await client.hset(f"{redis_prefix}state:t1/shape", mapping={"version": "2", "state": "[]"})

    assert await cache.get_session("t1", "garbled") is None
    assert await cache.get_session("t1", "a-list") is None
    assert await cache.get_conversation_state("t1", "garbled") is None
    assert await cache.get_conversation_state("t1", "shape") is None
    # A good put replaces the unreadable entry.
    assert await cache.put_conversation_state("t1", "garbled", ConversationState(), version=1)
    assert await cache.get_conversation_state("t1", "garbled") == CachedState(
        1, ConversationState()
    )

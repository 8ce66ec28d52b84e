"""The conversation-state feed to the cache is bounded: a slow or stalled
cache never gets more than a few puts at once (each one holds a connection
of a bounded pool), repeated commits of a conversation coalesce into its
newest state, and the backlog drops its oldest entries past a bound."""

from __future__ import annotations

import asyncio
import dataclasses

from adapters.memory.session_cache import InProcessSessionCache
from chat_service.domain.model import Conversation, ConversationState
from chat_service.pipeline.state_cache import StateCacheFeed
from chat_service.ports import CachedState, ConversationChange, CoordinationUnavailable
from tests.builders import make_conversation


class SlowCache(InProcessSessionCache):
    """Puts wait until the test opens the gate; counts how many wait at once."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()  # a put reached the cache
        self.in_flight = 0
        self.most_in_flight = 0
        self.puts = 0

    async def put_conversation_state(
        self, tenant_id: str, conversation_id: str, state: ConversationState, *, version: int
    ) -> bool:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        self.entered.set()
        try:
            await self.gate.wait()
            self.puts += 1
            return await super().put_conversation_state(
                tenant_id, conversation_id, state, version=version
            )
        finally:
            self.in_flight -= 1


def commits(conversations: list[Conversation], rounds: int) -> list[Conversation]:
    """Each conversation committed `rounds` times, interleaved, versions rising."""
    return [
        dataclasses.replace(
            conversation,
            version=conversation.version + n,
            state=ConversationState(current_intent=f"intent {n}"),
        )
        for n in range(rounds)
        for conversation in conversations
    ]


def change(conversation: Conversation) -> ConversationChange:
    return ConversationChange(conversation, expected_version=conversation.version - 1)


async def cached(cache: InProcessSessionCache, conversation: Conversation) -> CachedState | None:
    return await cache.get_conversation_state(conversation.tenant_id, conversation.conversation_id)


async def test_a_stalled_cache_gets_a_bounded_number_of_puts_and_the_newest_states() -> None:
    cache = SlowCache()
    feed = StateCacheFeed(cache, workers=2)
    conversations = [make_conversation() for _ in range(50)]
    for conversation in commits(conversations, rounds=20):
        feed.committed(change(conversation))
    async with asyncio.timeout(2):  # both workers reach the cache and wait there
        while cache.in_flight < 2:
            cache.entered.clear()
            await cache.entered.wait()
    assert cache.in_flight == 2  # and no third put beside them

    cache.gate.set()
    await feed.drain()
    assert cache.most_in_flight <= 2
    # Coalesced: far fewer puts than the 1000 commits, and each conversation
    # ends with its newest state.
    assert cache.puts <= 50 + 2
    for conversation in conversations:
        found = await cached(cache, conversation)
        assert found is not None
        assert (found.version, found.state.current_intent) == (
            conversation.version + 19,
            "intent 19",
        )


async def test_the_backlog_drops_its_oldest_conversations_past_its_bound() -> None:
    cache = SlowCache()
    feed = StateCacheFeed(cache, workers=1, max_pending=10)
    conversations = [make_conversation() for _ in range(30)]
    feed.committed(change(conversations[0]))
    await asyncio.sleep(0)  # the worker takes it, and waits on the cache
    for conversation in conversations[1:]:
        feed.committed(change(conversation))
    assert feed.pending == 10
    assert feed.dropped == 30 - 1 - 10

    cache.gate.set()
    await feed.drain()
    assert await cached(cache, conversations[0]) is not None  # the one in flight
    assert [await cached(cache, c) is not None for c in conversations[1:]] == [False] * 19 + [
        True
    ] * 10


async def test_an_older_commit_never_replaces_a_newer_one_waiting() -> None:
    cache = SlowCache()
    feed = StateCacheFeed(cache, workers=1)
    busy, conversation = make_conversation(), make_conversation()
    newer = dataclasses.replace(conversation, version=conversation.version + 1)
    feed.committed(change(busy))  # occupies the one worker
    feed.committed(change(newer))
    feed.committed(change(conversation))  # arrives late, older
    cache.gate.set()
    await feed.drain()
    found = await cached(cache, conversation)
    assert found is not None
    assert found.version == newer.version


class DownCache(InProcessSessionCache):
    async def put_conversation_state(
        self, tenant_id: str, conversation_id: str, state: ConversationState, *, version: int
    ) -> bool:
        raise CoordinationUnavailable("redis: down")


async def test_a_cache_that_is_down_costs_nothing_but_a_log_line() -> None:
    feed = StateCacheFeed(DownCache())
    for conversation in commits([make_conversation()], rounds=3):
        feed.committed(change(conversation))
    await feed.drain()  # nothing raised, nothing left behind
    assert feed.pending == 0

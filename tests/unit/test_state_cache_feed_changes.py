"""The conversation-state feed puts a state only when it changed: a commit
that leaves the state as the feed last put it (an end user's message, before
the engine answers) costs the cache nothing, and a state is only taken as
put once the cache took it."""

from __future__ import annotations

import asyncio
import collections
import dataclasses

from adapters.memory.session_cache import InProcessSessionCache
from chat_service.domain.model import Conversation, ConversationState
from chat_service.pipeline.state_cache import StateCacheFeed
from chat_service.ports import CachedState, ConversationChange, CoordinationUnavailable
from tests.builders import make_conversation


class CountingCache(InProcessSessionCache):
    def __init__(self) -> None:
        super().__init__()
        self.puts: list[int] = []
        self.failing = False
        self.held: dict[int, asyncio.Event] = {}  # version -> answered when set
        self.answered: dict[int, asyncio.Event] = collections.defaultdict(asyncio.Event)

    async def put_conversation_state(
        self, tenant_id: str, conversation_id: str, state: ConversationState, *, version: int
    ) -> bool:
        self.puts.append(version)
        if self.failing:
            raise CoordinationUnavailable("cache down")
        stored = await super().put_conversation_state(
            tenant_id, conversation_id, state, version=version
        )
        if version in self.held:  # taken, but the answer comes late
            await self.held[version].wait()
        self.answered[version].set()
        return stored


def at(conversation: Conversation, version: int, state: ConversationState) -> Conversation:
    return dataclasses.replace(conversation, version=version, state=state)


async def commit(feed: StateCacheFeed, conversation: Conversation) -> None:
    feed.committed(ConversationChange(conversation, expected_version=conversation.version - 1))
    await feed.drain()


async def cached(cache: CountingCache, conversation: Conversation) -> CachedState | None:
    return await cache.get_conversation_state(conversation.tenant_id, conversation.conversation_id)


async def test_a_commit_that_keeps_the_state_is_not_put_again() -> None:
    cache = CountingCache()
    feed = StateCacheFeed(cache)
    conversation = make_conversation()
    greeted = ConversationState(current_intent="greet")

    await commit(feed, at(conversation, 1, greeted))
    await commit(feed, at(conversation, 2, greeted))  # the user's next message
    assert cache.puts == [1]
    assert await cached(cache, conversation) == CachedState(1, greeted)

    ordered = ConversationState(current_intent="order")
    await commit(feed, at(conversation, 3, ordered))  # the engine's answer
    assert cache.puts == [1, 3]
    assert await cached(cache, conversation) == CachedState(3, ordered)


async def test_a_failed_put_is_tried_again_with_the_next_commit() -> None:
    cache = CountingCache()
    feed = StateCacheFeed(cache)
    conversation = make_conversation()
    state = ConversationState(current_intent="greet")

    cache.failing = True
    await commit(feed, at(conversation, 1, state))
    cache.failing = False
    await commit(feed, at(conversation, 2, state))
    assert cache.puts == [1, 2]
    assert await cached(cache, conversation) == CachedState(2, state)


async def test_a_put_answered_after_a_newer_one_does_not_count_as_the_last() -> None:
    cache = CountingCache()
    feed = StateCacheFeed(cache, workers=2)
    conversation = make_conversation()
    first, second = ConversationState(current_intent="a"), ConversationState(current_intent="b")
    cache.held[1] = asyncio.Event()

    feed.committed(ConversationChange(at(conversation, 1, first), expected_version=0))
    await asyncio.sleep(0)  # one worker is in the put of version 1
    feed.committed(ConversationChange(at(conversation, 2, second), expected_version=1))
    async with asyncio.timeout(2):  # the other worker puts version 2, answered at once
        await cache.answered[2].wait()
    assert await cached(cache, conversation) == CachedState(2, second)
    cache.held[1].set()
    await feed.drain()
    # The engine gave back its first state object again: the cache holds
    # the second, so it is put.
    await commit(feed, at(conversation, 3, first))
    assert await cached(cache, conversation) == CachedState(3, first)

"""The conversation writer's helpers: the bounded write-through cache of
conversations, and the coalesced wake-up of the outbox's readers."""

from __future__ import annotations

import asyncio

from chat_service.domain.model import Conversation
from chat_service.pipeline.writer import ConversationWriter, DelayedWake
from tests.builders import create_change, make_conversation
from tests.fakes import InMemoryStore


class CountingStore(InMemoryStore):
    """Counts the conversations read from the store (not from the cache)."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    async def get_conversation(self, tenant_id: str, conversation_id: str) -> Conversation | None:
        self.reads.append(conversation_id)
        return await super().get_conversation(tenant_id, conversation_id)


async def test_the_cache_keeps_the_conversations_written_last_up_to_its_size() -> None:
    store = CountingStore()
    writer = ConversationWriter(store, cache_size=2)
    first, second, third = (make_conversation() for _ in range(3))
    for conversation in (first, second, third):
        await writer.write(create_change(conversation))
    cache = writer.conversations
    assert len(cache) == 2

    for conversation in (second, third):  # kept: no read
        assert await cache.get(conversation.tenant_id, conversation.conversation_id)
    assert store.reads == []
    # The oldest went: read from the store (and kept again, the next oldest out).
    assert await cache.get(first.tenant_id, first.conversation_id)
    assert store.reads == [first.conversation_id]
    assert len(cache) == 2
    assert await cache.get(second.tenant_id, second.conversation_id)
    assert store.reads == [first.conversation_id, second.conversation_id]


async def test_a_fresh_read_goes_to_the_store_and_a_forgotten_one_too() -> None:
    store = CountingStore()
    writer = ConversationWriter(store)
    conversation = make_conversation()
    await writer.write(create_change(conversation))
    key = (conversation.tenant_id, conversation.conversation_id)

    await writer.conversations.get(*key, fresh=True)
    writer.conversations.forget(*key)
    await writer.conversations.get(*key)

    assert store.reads == [conversation.conversation_id] * 2


async def test_the_calls_of_one_interval_wake_once_and_a_later_one_again() -> None:
    woken = asyncio.Event()
    wakes: list[int] = []

    def on_wake() -> None:
        wakes.append(1)
        woken.set()

    wake = DelayedWake(on_wake, delay=0.001)
    wake()
    wake()
    wake()
    await asyncio.wait_for(woken.wait(), 5)
    await asyncio.sleep(0.02)  # nothing more comes from those three
    assert wakes == [1]

    woken.clear()
    wake()
    await asyncio.wait_for(woken.wait(), 5)
    await asyncio.sleep(0.02)
    assert wakes == [1, 1]

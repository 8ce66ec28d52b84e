"""Bounds on streams and watches: per-tenant caps, token expiry, and the
drain, each ending with where to resume."""

from __future__ import annotations

import asyncio
import time

import pytest

from chat_service.domain.errors import NotFound, ResourceExhausted, Unauthenticated, Unavailable
from chat_service.pipeline.conversation_stream import Opened, StreamItem
from chat_service.pipeline.stream_limits import server_draining
from chat_service.pipeline.stream_opener import StreamOpenRequest
from chat_service.pipeline.watch import EventTail, WatchConversations
from tests.builders import OTHER_TENANT, TENANT, create_change, make_conversation, make_event
from tests.fakes import InMemoryStore
from tests.unit.test_conversation_stream import _conversation_with, _entries, _take, build


async def test_a_tenant_cannot_open_more_streams_than_its_cap() -> None:
    world = build(max_per_tenant=2)
    conversation = await _conversation_with(world.store, 1)
    join = StreamOpenRequest(conversation_id=conversation.conversation_id)
    first = await world.streams.open(TENANT, join)
    await world.streams.open(TENANT, join)

    with pytest.raises(ResourceExhausted) as refused:
        await world.streams.open(TENANT, join)
    assert refused.value.reason == "TOO_MANY_STREAMS"
    assert refused.value.metadata["limit"] == "2"
    # Another tenant's slots are its own.
    other = await world.streams.open(
        OTHER_TENANT, StreamOpenRequest(user_id="u", channel=conversation.channel)
    )
    # A closed stream frees its slot; a failed open never holds one.
    first.close()
    with pytest.raises(NotFound):
        await world.streams.open(TENANT, StreamOpenRequest(conversation_id="gone"))
    await world.streams.open(TENANT, join)
    assert world.streams.open_count == 3
    other.close()


async def test_a_tenant_cannot_open_more_watches_than_its_cap() -> None:
    store = InMemoryStore()
    watches = WatchConversations(store, EventTail(store), buffer_size=4, max_per_tenant=1)
    first = watches.open(TENANT)

    with pytest.raises(ResourceExhausted) as refused:
        watches.open(TENANT)
    assert refused.value.reason == "TOO_MANY_WATCHES"
    watches.open(OTHER_TENANT).close()
    first.close()
    watches.open(TENANT).close()
    assert watches.open_count == 0


async def test_a_stream_ends_when_its_token_expires() -> None:
    world = build()
    conversation = await _conversation_with(world.store, 3)
    stream = await world.streams.open(
        TENANT,
        StreamOpenRequest(conversation_id=conversation.conversation_id, resume_after=1),
        valid_until=time.time() + 0.05,
    )
    got: list[StreamItem] = []

    async def read_all() -> None:
        async for item in stream.items():
            got.append(item)

    with pytest.raises(Unauthenticated) as ended:
        await asyncio.wait_for(read_all(), 2)

    assert isinstance(got[0], Opened)
    assert len(got) == 3  # opened, then the replay of 2 and 3
    assert ended.value.reason == "TOKEN_EXPIRED"
    assert ended.value.metadata["resume_after_sequence"] == "3"
    stream.close()
    assert world.bus.topics == 0


async def test_a_watch_ends_when_its_token_expires() -> None:
    store = InMemoryStore()
    tail = EventTail(store)
    watch = WatchConversations(store, tail, buffer_size=4).open(
        TENANT, valid_until=time.time() + 0.05
    )

    with pytest.raises(Unauthenticated) as ended:
        await _entries(watch.entries(), 1)

    assert ended.value.reason == "TOKEN_EXPIRED"
    watch.close()


async def test_draining_ends_streams_with_their_resume_position_and_refuses_new_ones() -> None:
    world = build()
    conversation = await _conversation_with(world.store, 2)
    join = StreamOpenRequest(conversation_id=conversation.conversation_id)
    stream = await world.streams.open(TENANT, join)
    items = stream.items()
    await _take(items, 1)
    waiting = asyncio.create_task(_take(items, 1))
    await asyncio.sleep(0.01)

    world.streams.close_all(server_draining)

    with pytest.raises(Unavailable) as ended:
        await waiting
    assert ended.value.reason == "SERVER_DRAINING"
    assert ended.value.metadata["resume_after_sequence"] == "2"
    # A stream that opens while the server drains ends at once, the same way.
    late = await world.streams.open(TENANT, join)
    with pytest.raises(Unavailable):
        await _take(late.items(), 5)
    stream.close()
    late.close()


async def test_draining_wakes_a_waiting_watch_and_ends_new_ones() -> None:
    store = InMemoryStore()
    tail = EventTail(store)
    conversation = make_conversation(tenant_id=TENANT)
    await store.write(create_change(conversation, events=(make_event(conversation),)))
    watches = WatchConversations(store, tail, buffer_size=4)
    watch = watches.open(TENANT, resume_after=0)
    entries = watch.entries()
    assert [e.position for e in await _entries(entries, 1)] == [1]
    waiting = asyncio.create_task(_entries(entries, 1))
    await asyncio.sleep(0.01)

    watches.close_all(server_draining)

    with pytest.raises(Unavailable):
        await waiting
    assert watch.position == 1  # where a new watch resumes
    late = watches.open(TENANT)
    with pytest.raises(Unavailable):
        await _entries(late.entries(), 1)
    watch.close()
    late.close()
    assert watches.open_count == 0

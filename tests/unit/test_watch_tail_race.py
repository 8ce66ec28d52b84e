"""The event tail with nobody watching only keeps up with the log's end. A
watch that starts while that look-up is under way must still get every
entry committed after it started listening: the tail must not move past
them on the strength of an answer read after the watch subscribed.

The look-up is made slow here on purpose (as a SQLite reader thread is under
CPU load, or queued behind other reads): it reads the end only after the
watch subscribed and its tenant's events were committed."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from chat_service.domain.events import EventType, OutboxEntry
from chat_service.pipeline.watch import EventTail, WatchConversations
from tests.builders import TENANT, create_change, make_conversation, make_event
from tests.fakes import InMemoryStore
from tests.unit.test_conversation_stream import _entries


class _SlowEnd(InMemoryStore):
    """Its `last_event_position`, once `held`, reads the end only when let go."""

    def __init__(self) -> None:
        super().__init__()
        self.held = False
        self.asked = asyncio.Event()
        self.let_go = asyncio.Event()

    async def last_event_position(self) -> int:
        if self.held:
            self.asked.set()
            await self.let_go.wait()
        return await super().last_event_position()


async def _write(store: InMemoryStore, *types: EventType) -> None:
    conversation = make_conversation(tenant_id=TENANT)
    events = [make_event(conversation, event_type) for event_type in types]
    await store.write(create_change(conversation, events=events))


async def _follow_while_a_listener_joins(
    store: _SlowEnd, tail: EventTail, join: Callable[[], object]
) -> None:
    store.held = True
    following = asyncio.create_task(tail.follow_once())  # nobody listens yet
    await store.asked.wait()
    join()
    await _write(store, EventType.MESSAGE_RECEIVED, EventType.MESSAGE_SENT)
    store.let_go.set()
    await following
    store.held = False
    await tail.follow_once()


async def test_a_listener_that_joins_during_the_tails_idle_look_up_misses_nothing() -> None:
    store = _SlowEnd()
    tail = EventTail(store)
    await tail.start_position()
    got: list[OutboxEntry] = []

    await _follow_while_a_listener_joins(store, tail, lambda: tail.subscribe(TENANT, got.append))

    assert [entry.position for entry in got] == [1, 2]


async def test_a_live_watch_opened_during_the_tails_idle_look_up_gets_what_follows() -> None:
    store = _SlowEnd()
    tail = EventTail(store)
    await tail.start_position()
    watches = WatchConversations(store, tail, buffer_size=8)
    opened = []

    await _follow_while_a_listener_joins(store, tail, lambda: opened.append(watches.open(TENANT)))

    (watch,) = opened
    taken = await _entries(watch.entries(), 2)
    assert [entry.position for entry in taken] == [1, 2]
    watch.close()


async def test_a_watch_from_now_on_gets_nothing_committed_before_it_opened() -> None:
    # The tail has not yet handed out what was just committed (it trails
    # the log by its wake-up delay): a watch opened without a token then
    # must still start after it, at the log's end.
    store = InMemoryStore()
    tail = EventTail(store)
    await tail.start_position()
    watches = WatchConversations(store, tail, buffer_size=8)
    await _write(store, EventType.MESSAGE_RECEIVED, EventType.MESSAGE_SENT)  # 1, 2

    watch = watches.open(TENANT, resume_after=await watches.start_after(TENANT, ""))
    await _write(store, EventType.MESSAGE_RECEIVED)  # 3
    await tail.follow_once()

    taken = await _entries(watch.entries(), 1)
    assert [entry.position for entry in taken] == [3]
    watch.close()

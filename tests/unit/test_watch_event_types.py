"""A watch that asks for some event types only (or channels, or statuses):
its position, where a new watch resumes, moves past the entries it was
handed and left out, but never past a wanted one its consumer has not
taken. So a rarely matching watch does not resume far behind the log's end
(re-reading everything since, or past the retention: RESUME_TOKEN_EXPIRED)."""

from __future__ import annotations

import pytest

from chat_service.domain.events import EventType
from chat_service.pipeline import watch as watch_module
from chat_service.pipeline.watch import EventTail, WatchConversations
from tests.builders import TENANT, create_change, make_conversation, make_event
from tests.fakes import InMemoryStore
from tests.unit.test_conversation_stream import _entries


async def _write(store: InMemoryStore, *types: EventType) -> None:
    conversation = make_conversation(tenant_id=TENANT)
    events = [make_event(conversation, event_type) for event_type in types]
    await store.write(create_change(conversation, events=events))


async def test_a_filtered_watch_moves_past_what_it_leaves_out_and_resumes_without_a_gap() -> None:
    store = InMemoryStore()
    tail = EventTail(store)
    await tail.start_position()
    watches = WatchConversations(store, tail, buffer_size=8)
    watch = watches.open(TENANT, event_types=[EventType.STATUS_CHANGED])
    entries = watch.entries()

    await _write(store, *[EventType.MESSAGE_RECEIVED] * 3)
    await tail.follow_once()
    assert watch.position == 3  # all three handed over and left out

    # A wanted entry waits for its consumer: nothing after it moves the
    # position past it until it is taken.
    await _write(store, EventType.STATUS_CHANGED, EventType.MESSAGE_RECEIVED)
    await tail.follow_once()
    assert watch.position == 3
    taken = await _entries(entries, 1)
    assert [entry.position for entry in taken] == [4]
    await _write(store, EventType.MESSAGE_RECEIVED)
    await tail.follow_once()
    assert watch.position == 6

    # A watch resumed from the position, asking for the same types, gets
    # the next wanted entry and nothing twice.
    await _write(store, EventType.MESSAGE_RECEIVED, EventType.STATUS_CHANGED)
    resumed = watches.open(
        TENANT, event_types=[EventType.STATUS_CHANGED], resume_after=watch.position
    )
    assert [entry.position for entry in await _entries(resumed.entries(), 1)] == [8]
    watch.close()
    resumed.close()


async def test_what_it_leaves_out_live_does_not_move_a_catching_up_watch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(watch_module, "_CATCH_UP_BATCH", 2)
    store = InMemoryStore()
    await _write(store, *[EventType.STATUS_CHANGED] * 4)
    tail = EventTail(store)
    await tail.start_position()  # at 4: the watch reads 1..4 from the store
    watches = WatchConversations(store, tail, buffer_size=8)
    watch = watches.open(TENANT, event_types=[EventType.STATUS_CHANGED], resume_after=0)
    entries = watch.entries()
    first = await _entries(entries, 2)  # the first batch, read from the store

    # Meanwhile an entry it leaves out goes by live: the catch-up goes on
    # from the batch it read, not from there.
    await _write(store, EventType.MESSAGE_RECEIVED)
    await tail.follow_once()
    rest = await _entries(entries, 2)
    assert [entry.position for entry in first + rest] == [1, 2, 3, 4]
    watch.close()

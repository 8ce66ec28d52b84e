"""Watches and the outbox retention: a process whose event tail stalled for
longer than the retention cannot hand its live watches what was pruned
meanwhile; those watches end with RESUME_TOKEN_EXPIRED instead of silently
skipping events (the client starts a new watch and reloads)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from chat_service.domain.errors import FailedPrecondition
from chat_service.domain.events import DomainEvent, OutboxEntry
from chat_service.pipeline.watch import EventTail, WatchConversations
from tests.builders import OTHER_TENANT, TENANT, create_change, make_conversation, make_event
from tests.fakes import InMemoryStore
from tests.unit.test_conversation_stream import _entries

LONG_AGO = datetime(2000, 1, 1, tzinfo=UTC)


async def _publish_and_prune(store: InMemoryStore, keep_last: int) -> int:
    """Every event published (the relay ran elsewhere), then all but the
    last `keep_last` pruned; returns the position pruned through."""
    claimed = await store.claim_outbox("relay", limit=1000, lease_seconds=60)
    await store.mark_published("relay", [entry.position for entry in claimed])
    await store.prune_outbox(published_before=LONG_AGO, keep_last=keep_last, limit=1000)
    return await store.last_event_position() - keep_last


async def _write(store: InMemoryStore, tenant_id: str, count: int) -> list[DomainEvent]:
    conversation = make_conversation(tenant_id=tenant_id)
    events = [make_event(conversation) for _ in range(count)]
    await store.write(create_change(conversation, events=events))
    return events


async def test_a_live_watch_behind_pruned_events_ends_with_resume_token_expired() -> None:
    store = InMemoryStore()
    tail = EventTail(store)
    await tail.start_position()
    watches = WatchConversations(store, tail, buffer_size=8)
    live = watches.open(TENANT)
    entries = live.entries()
    waiting = asyncio.create_task(_entries(entries, 1))

    # The tail stalls while 4 events are written and all but one pruned.
    await _write(store, TENANT, 4)
    pruned_through = await _publish_and_prune(store, keep_last=1)
    assert pruned_through == 3
    await tail.follow_once()

    with pytest.raises(FailedPrecondition) as ended:
        await waiting
    assert ended.value.reason == "RESUME_TOKEN_EXPIRED"
    assert live.position == 0  # nothing was skipped silently
    live.close()
    assert watches.open_count == 0


async def test_watches_that_miss_nothing_keep_flowing_past_a_pruned_stretch() -> None:
    store = InMemoryStore()
    tail = EventTail(store)
    await tail.start_position()
    watches = WatchConversations(store, tail, buffer_size=8)
    live_other_tenant = watches.open(OTHER_TENANT)
    mine = await _write(store, TENANT, 4)
    pruned_through = await _publish_and_prune(store, keep_last=1)
    # Resumed at the retention's edge: it reads the rest from the store.
    resumed = watches.open(TENANT, resume_after=pruned_through)
    later = await _write(store, TENANT, 1)

    await tail.follow_once()  # behind the retention: goes on from what is left
    await tail.follow_once()
    got: list[OutboxEntry] = await _entries(resumed.entries(), 2)

    assert [entry.event for entry in got] == [mine[3], later[0]]
    # Another tenant's live watch was behind the pruned stretch too: whether
    # it held that tenant's events is unknowable once they are gone.
    with pytest.raises(FailedPrecondition):
        await _entries(live_other_tenant.entries(), 1)
    resumed.close()
    live_other_tenant.close()

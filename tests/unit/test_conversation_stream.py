"""The stream session and the watch, on fakes: ordering, gaps, bounds."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from adapters.memory.live_bus import InProcessLiveBus
from chat_service.domain.enums import Channel, ConversationStatus, DeliveryStatus
from chat_service.domain.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from chat_service.domain.events import OutboxEntry
from chat_service.domain.live import DeliveryChanged, MessageStored, conversation_topic
from chat_service.domain.model import Conversation
from chat_service.pipeline.conversation_stream import Acked, Opened, StreamItem
from chat_service.pipeline.stream_opener import ConversationStreams, StreamOpenRequest
from chat_service.pipeline.watch import EventTail, WatchConversations
from chat_service.ports import ConversationChange
from tests import builders
from tests.builders import TENANT, create_change, make_conversation, make_event, make_message
from tests.fakes import InMemoryStore
from tests.unit.test_send_message import inbound


@dataclass
class World:
    store: InMemoryStore
    bus: InProcessLiveBus
    streams: ConversationStreams


def build(
    buffer_size: int = 64,
    stall_grace: float = 5.0,
    *,
    max_per_tenant: int = 1000,
    typing_interval: float = 1.0,
) -> World:
    """The core as production wires it, on fakes; its streams, store and bus."""
    store = InMemoryStore()
    bus = InProcessLiveBus()
    settings = dataclasses.replace(
        builders.CORE_SETTINGS,
        stream_buffer_size=buffer_size,
        stream_stall_grace_seconds=stall_grace,
        max_streams_per_tenant=max_per_tenant,
    )
    tuning = dataclasses.replace(builders.FAST, typing_interval=typing_interval)
    services = builders.build_core(store=store, bus=bus, settings=settings, tuning=tuning)
    return World(store, bus, services.streams)


async def _conversation_with(store: InMemoryStore, count: int) -> Conversation:
    conversation = make_conversation(channel=Channel.WEB)
    messages = tuple(make_message(conversation, seq) for seq in range(1, count + 1))
    change = create_change(conversation, messages=messages)
    await store.write(change)
    return change.conversation


async def _take(items: AsyncIterator[StreamItem], count: int) -> list[StreamItem]:
    taken = []
    async with asyncio.timeout(2):
        async for item in items:
            taken.append(item)
            if len(taken) == count:
                break
    return taken


def _sequences(items: list[StreamItem]) -> list[int]:
    return [item.message.sequence for item in items if isinstance(item, MessageStored)]


async def test_replay_then_live_without_gap_or_repeat() -> None:
    world = build()
    conversation = await _conversation_with(world.store, 5)
    stream = await world.streams.open(
        TENANT, StreamOpenRequest(conversation_id=conversation.conversation_id, resume_after=2)
    )
    items = stream.items()
    opened = await _take(items, 1)
    assert isinstance(opened[0], Opened)
    assert opened[0].replay_through == 5

    # Live events for messages the replay also reads, and a new one.
    topic = conversation_topic(TENANT, conversation.conversation_id)
    stored = await world.store.list_messages(TENANT, conversation.conversation_id, limit=10)
    for message in stored[3:]:
        world.bus.publish(topic, MessageStored(message))
    extra = make_message(conversation, 6)
    await world.store.write(
        ConversationChange(
            dataclasses.replace(conversation, last_sequence=6, version=conversation.version + 1),
            expected_version=conversation.version,
            messages=(extra,),
        )
    )
    world.bus.publish(topic, MessageStored(extra))

    assert _sequences(await _take(items, 4)) == [3, 4, 5, 6]
    stream.close()
    assert world.bus.topics == 0


async def test_a_gap_in_live_events_is_filled_from_the_store() -> None:
    world = build()
    conversation = await _conversation_with(world.store, 1)
    stream = await world.streams.open(
        TENANT, StreamOpenRequest(conversation_id=conversation.conversation_id)
    )
    items = stream.items()
    await _take(items, 1)
    later = tuple(make_message(conversation, seq) for seq in (2, 3, 4))
    await world.store.write(
        ConversationChange(
            dataclasses.replace(conversation, last_sequence=4, version=conversation.version + 1),
            expected_version=conversation.version,
            messages=later,
        )
    )

    # Only the last one's live event arrives (the others were lost).
    world.bus.publish(
        conversation_topic(TENANT, conversation.conversation_id), MessageStored(later[2])
    )

    assert _sequences(await _take(items, 3)) == [2, 3, 4]
    stream.close()


async def test_a_reader_that_falls_behind_is_ended_with_where_to_resume() -> None:
    world = build(buffer_size=4)
    conversation = await _conversation_with(world.store, 1)
    stream = await world.streams.open(
        TENANT, StreamOpenRequest(conversation_id=conversation.conversation_id)
    )
    items = stream.items()
    await _take(items, 1)
    topic = conversation_topic(TENANT, conversation.conversation_id)

    for _ in range(10):  # nobody reads meanwhile
        world.bus.publish(topic, DeliveryChanged("m", 1, DeliveryStatus.READ))

    with pytest.raises(ResourceExhausted) as ended:
        await _take(items, 20)
    assert ended.value.reason == "STREAM_BUFFER_FULL"
    assert ended.value.metadata["resume_after_sequence"] == "1"
    stream.close()


async def test_sending_on_a_stream_acks_after_the_messages() -> None:
    world = build()
    stream = await world.streams.open(TENANT, StreamOpenRequest(user_id="u-1", channel=Channel.WEB))
    items = stream.items()
    await _take(items, 1)
    await stream.send(
        inbound(
            "hi",
            message_id="s-1",
            tenant_id=TENANT,
            user_id="u-1",
            conversation_id=stream.conversation_id,
        )
    )

    got = await _take(items, 3)
    assert _sequences(got) == [1, 2]
    assert isinstance(got[2], Acked)
    assert (got[2].message_id, got[2].sequence, got[2].duplicate) == ("s-1", 1, False)


@pytest.mark.parametrize(
    ("request_", "fields"),
    [
        (StreamOpenRequest(), ["open.user_id", "open.channel"]),
        (
            StreamOpenRequest(user_id="u", channel=Channel.WEB, resume_after=0),
            ["open.resume_after_sequence"],
        ),
        (StreamOpenRequest(conversation_id="c", resume_after=-1), ["open.resume_after_sequence"]),
    ],
)
async def test_bad_open_requests(request_: StreamOpenRequest, fields: list[str]) -> None:
    world = build()

    with pytest.raises(InvalidArgument) as refused:
        await world.streams.open(TENANT, request_)

    assert [v.field for v in refused.value.violations] == fields
    assert world.bus.topics == 0


async def test_opening_an_unknown_conversation_leaves_nothing_behind() -> None:
    world = build()

    with pytest.raises(NotFound):
        await world.streams.open(TENANT, StreamOpenRequest(conversation_id="nope"))

    assert world.bus.topics == 0
    assert world.streams.open_count == 0


async def test_resume_past_the_end_is_invalid() -> None:
    world = build()
    conversation = await _conversation_with(world.store, 2)

    with pytest.raises(InvalidArgument):
        await world.streams.open(
            TENANT, StreamOpenRequest(conversation_id=conversation.conversation_id, resume_after=3)
        )


# ------------------------------------------------------------------- watch


async def _entries(watch_iter: AsyncIterator[OutboxEntry], count: int) -> list[OutboxEntry]:
    taken = []
    async with asyncio.timeout(2):
        async for entry in watch_iter:
            taken.append(entry)
            if len(taken) == count:
                break
    return taken


async def test_a_watch_catches_up_then_follows_the_tail() -> None:
    store = InMemoryStore()
    tail = EventTail(store)
    mine = make_conversation(tenant_id=TENANT)
    await store.write(create_change(mine, events=(make_event(mine), make_event(mine))))
    await tail.follow_once()
    watch = WatchConversations(store, tail, buffer_size=16).open(TENANT, resume_after=0)
    entries = watch.entries()

    first = await _entries(entries, 2)
    more = make_event(mine)
    await store.write(
        ConversationChange(dataclasses.replace(mine, version=2), expected_version=1, events=(more,))
    )
    await tail.follow_once()
    later = await _entries(entries, 1)

    assert [e.position for e in first + later] == [1, 2, 3]
    assert later[0].event == more
    watch.close()


async def test_a_watch_filters_and_sees_no_other_tenant() -> None:
    store = InMemoryStore()
    tail = EventTail(store)
    watch = WatchConversations(store, tail, buffer_size=16).open(
        TENANT, channels=[Channel.SMS], statuses=[ConversationStatus.ACTIVE]
    )
    entries = watch.entries()
    theirs = make_conversation(tenant_id="other", channel=Channel.SMS)
    web = make_conversation(tenant_id=TENANT, channel=Channel.WEB)
    sms = make_conversation(tenant_id=TENANT, channel=Channel.SMS)
    for conversation in (theirs, web, sms):
        event = dataclasses.replace(
            make_event(conversation), conversation_status=ConversationStatus.ACTIVE
        )
        await store.write(create_change(conversation, events=(event,)))
    await tail.follow_once()

    got = await _entries(entries, 1)

    assert [e.event.conversation_id for e in got] == [sms.conversation_id]
    watch.close()


async def test_a_watcher_that_falls_behind_reads_on_from_the_log() -> None:
    store = InMemoryStore()
    tail = EventTail(store)
    watch = WatchConversations(store, tail, buffer_size=2).open(TENANT)
    entries = watch.entries()
    conversation = make_conversation(tenant_id=TENANT)
    await store.write(
        create_change(conversation, events=tuple(make_event(conversation) for _ in range(7)))
    )
    await tail.follow_once()  # 7 live entries for a queue of 2: it overflows

    got = await _entries(entries, 7)

    assert [e.position for e in got] == list(range(1, 8))
    watch.close()


async def test_a_resume_token_past_the_log_is_refused() -> None:
    store = InMemoryStore()
    conversation = make_conversation(tenant_id=TENANT)
    await store.write(create_change(conversation, events=(make_event(conversation),)))
    watches = WatchConversations(store, EventTail(store), buffer_size=2)

    await watches.check_resume(1)
    with pytest.raises(FailedPrecondition) as refused:
        await watches.check_resume(2)
    assert refused.value.reason == "RESUME_TOKEN_INVALID"


async def test_a_failed_stream_stops_listening_and_abandons_a_client_that_reads_nothing() -> None:
    world = build(buffer_size=2, stall_grace=0.05)
    conversation = await _conversation_with(world.store, 1)
    abandoned = asyncio.Event()
    stream = await world.streams.open(
        TENANT,
        StreamOpenRequest(conversation_id=conversation.conversation_id),
        abandon=abandoned.set,
    )
    topic = conversation_topic(TENANT, conversation.conversation_id)

    for _ in range(5):  # the client reads nothing, not even `opened`
        world.bus.publish(topic, DeliveryChanged("m", 1, DeliveryStatus.READ))

    assert world.bus.topics == 0  # it stopped listening at once
    await asyncio.wait_for(abandoned.wait(), 1)
    stream.close()
    assert world.streams.open_count == 0


async def test_a_stream_that_ends_in_time_is_not_abandoned() -> None:
    world = build(buffer_size=2, stall_grace=0.05)
    conversation = await _conversation_with(world.store, 1)
    abandoned = asyncio.Event()
    stream = await world.streams.open(
        TENANT,
        StreamOpenRequest(conversation_id=conversation.conversation_id),
        abandon=abandoned.set,
    )
    stream.fail(ResourceExhausted("slow", reason="STREAM_BUFFER_FULL"))

    with pytest.raises(ResourceExhausted):
        await _take(stream.items(), 5)
    stream.close()
    # Not time but a later timer: timers run in the order they are due, so
    # once this one has run, the abandon timer (due 0.05 s after fail()) has
    # had its turn.
    later = asyncio.Event()
    asyncio.get_running_loop().call_later(0.05 + 0.01, later.set)
    await later.wait()
    assert not abandoned.is_set()


async def test_a_waiting_watcher_is_woken_when_its_buffer_overflows() -> None:
    # Regression: the overflow emptied the queue while the consumer waited on
    # it, and nothing woke the consumer again: the watch froze for good.
    store = InMemoryStore()
    tail = EventTail(store)
    watch = WatchConversations(store, tail, buffer_size=2).open(TENANT)
    entries = watch.entries()
    waiting = asyncio.create_task(_entries(entries, 7))
    await asyncio.sleep(0.01)  # the consumer waits for its first entry now
    assert not waiting.done()
    conversation = make_conversation(tenant_id=TENANT)
    await store.write(
        create_change(conversation, events=tuple(make_event(conversation) for _ in range(7)))
    )

    await tail.follow_once()  # 7 live entries for a queue of 2, consumer waiting

    got = await waiting  # _entries gives up after 2 s: a frozen watch fails here
    assert [e.position for e in got] == list(range(1, 8))
    watch.close()

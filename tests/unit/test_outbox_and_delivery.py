"""The outbox relay and the delivery queue, on fakes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from chat_service.domain.enums import Channel, DeliveryStatus
from chat_service.domain.events import EventType, OutboxEntry
from chat_service.domain.model import Conversation, Message
from chat_service.pipeline.batch_loop import BatchLoop
from chat_service.pipeline.delivery import DeliveryPolicy, DeliveryQueue
from chat_service.pipeline.outbox_relay import OutboxRelay, RelaySettings
from tests.builders import T0, create_change, make_conversation, make_event, make_message
from tests.fakes import InMemoryStore, RecordingPublisher, RecordingSender, SteppingClock


async def _store_with_events(count: int) -> InMemoryStore:
    store = InMemoryStore()
    conversation = make_conversation()
    events = tuple(make_event(conversation) for _ in range(count))
    await store.write(create_change(conversation, events=events))
    return store


async def test_relay_publishes_everything_in_order_once() -> None:
    store = await _store_with_events(250)
    publisher = RecordingPublisher()
    relay = OutboxRelay(store, publisher, RelaySettings(batch_size=100))

    while await relay.publish_once():
        pass

    positions = [entry.position for entry in publisher.published]
    assert len(positions) == 250
    assert positions == sorted(positions)
    assert await relay.publish_once() == 0


async def test_events_wait_in_the_outbox_while_publishing_fails() -> None:
    store = await _store_with_events(5)
    publisher = RecordingPublisher()
    publisher.failing = True
    relay = OutboxRelay(
        store, publisher, RelaySettings(lease_seconds=0.01, max_backoff_seconds=0.01)
    )
    attempts = 0
    retried = asyncio.Event()
    publish = publisher.publish

    async def counted(entries: Sequence[OutboxEntry]) -> None:
        nonlocal attempts
        attempts += 1
        if attempts == 3:
            retried.set()
        await publish(entries)

    publisher.publish = counted  # type: ignore[method-assign]
    task = asyncio.create_task(relay.run())
    await asyncio.wait_for(retried.wait(), 2)  # tried, and tried again after backoffs
    assert publisher.published == []

    publisher.failing = False
    relay.wake()
    for _ in range(100):
        if len(publisher.published) == 5:
            break
        await asyncio.sleep(0.02)
    task.cancel()

    assert len(publisher.published) == 5


async def test_a_wake_up_publishes_without_waiting_for_the_poll() -> None:
    store = InMemoryStore()
    publisher = RecordingPublisher()
    relay = OutboxRelay(store, publisher, RelaySettings(idle_poll_seconds=30))
    task = asyncio.create_task(relay.run())
    await asyncio.sleep(0.01)

    conversation = make_conversation()
    await store.write(create_change(conversation, events=(make_event(conversation),)))
    relay.wake()
    for _ in range(50):
        if publisher.published:
            break
        await asyncio.sleep(0.01)
    task.cancel()

    assert len(publisher.published) == 1


def _queue(store: InMemoryStore, sender: RecordingSender) -> DeliveryQueue:
    return DeliveryQueue(
        store=store,
        senders={Channel.WEB: sender},
        clock=SteppingClock(T0),
        policy=DeliveryPolicy(attempts=3, first_backoff=0.001),
    )


async def _stored_replies(
    store: InMemoryStore, count: int, channel: Channel = Channel.WEB
) -> tuple[Conversation, tuple[Message, ...]]:
    conversation = make_conversation(channel=channel)
    messages = tuple(
        make_message(conversation, seq, delivery_status=DeliveryStatus.PENDING)
        for seq in range(1, count + 1)
    )
    await store.write(create_change(conversation, messages=messages))
    return conversation, messages


async def test_deliveries_are_in_order_and_recorded() -> None:
    store = InMemoryStore()
    sender = RecordingSender()
    queue = _queue(store, sender)
    conversation, messages = await _stored_replies(store, 5)

    queue.submit(conversation, messages)
    assert await queue.wait_idle(1)

    assert [m.sequence for m in sender.delivered] == [1, 2, 3, 4, 5]
    for message in messages:
        stored = await store.get_message(message.tenant_id, message.message_id)
        assert stored is not None
        assert stored.delivery_status is DeliveryStatus.SENT


async def test_retryable_failures_are_retried() -> None:
    store = InMemoryStore()
    sender = RecordingSender(failures=2)
    queue = _queue(store, sender)
    conversation, messages = await _stored_replies(store, 1)

    queue.submit(conversation, messages)
    assert await queue.wait_idle(1)

    assert sender.attempts == 3
    stored = await store.get_message(messages[0].tenant_id, messages[0].message_id)
    assert stored is not None
    assert stored.delivery_status is DeliveryStatus.SENT


async def test_exhausted_or_permanent_failures_are_dead_lettered() -> None:
    store = InMemoryStore()
    sender = RecordingSender(failures=1, retryable=False)
    queue = _queue(store, sender)
    conversation, messages = await _stored_replies(store, 2)

    queue.submit(conversation, messages)
    assert await queue.wait_idle(1)

    first = await store.get_message(messages[0].tenant_id, messages[0].message_id)
    second = await store.get_message(messages[1].tenant_id, messages[1].message_id)
    assert first is not None
    assert second is not None
    assert first.delivery_status is DeliveryStatus.FAILED
    assert second.delivery_status is DeliveryStatus.SENT  # the queue moves on
    entries = await store.claim_outbox("t", limit=100, lease_seconds=1)
    dead = [
        e.event
        for e in entries
        if e.event.event_type is EventType.DELIVERY_UPDATED and e.event.metadata.get("dead_letter")
    ]
    assert [event.message_id for event in dead] == [messages[0].message_id]


async def test_a_channel_without_connector_fails_at_once() -> None:
    store = InMemoryStore()
    queue = _queue(store, RecordingSender())
    conversation, messages = await _stored_replies(store, 1, Channel.SLACK)

    queue.submit(conversation, messages)
    assert await queue.wait_idle(1)

    stored = await store.get_message(messages[0].tenant_id, messages[0].message_id)
    assert stored is not None
    assert stored.delivery_status is DeliveryStatus.FAILED


async def test_channels_delivered_by_storing_are_never_queued() -> None:
    store = InMemoryStore()
    sender = RecordingSender()
    queue = DeliveryQueue(
        store=store,
        senders={Channel.WEB: sender},
        clock=SteppingClock(T0),
        delivered_by_storing=(Channel.WEB,),
    )
    conversation, messages = await _stored_replies(store, 2)

    queue.submit(conversation, messages)

    assert queue.initial_status(Channel.WEB) is DeliveryStatus.SENT
    assert queue.initial_status(Channel.SMS) is DeliveryStatus.PENDING
    assert queue.pending == 0
    assert sender.attempts == 0


async def test_the_batch_loop_drains_backlogs_backs_off_and_wakes() -> None:
    results: list[int | Exception] = [3, 3, 1, ConnectionError("down"), 0]
    calls: list[float] = []
    wake = asyncio.Event()
    called = asyncio.Event()

    async def step() -> int:
        calls.append(asyncio.get_running_loop().time())
        called.set()
        outcome = results.pop(0) if results else 0
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    loop = BatchLoop(
        step=step,
        wake=wake,
        batch_size=3,
        idle_seconds=30,
        max_backoff=0.01,
        log=logging.getLogger("test"),
        name="test loop",
        first_backoff=0.001,
    )

    async def calls_reach(count: int) -> None:
        async with asyncio.timeout(2):
            while len(calls) < count:
                called.clear()
                await called.wait()

    task = asyncio.create_task(loop.run())
    # Full batches ran back to back, the short one waited: the error came
    # only with the wake-up, then a retry after the backoff, then idle again.
    await calls_reach(3)
    # An idle loop does nothing: no event to wait for, so a short bounded
    # wait (the loop's backoffs are 1-10 ms, its idle time 30 s).
    await asyncio.sleep(0.05)
    assert len(calls) == 3
    wake.set()
    await calls_reach(5)
    await asyncio.sleep(0.05)  # (as above)
    task.cancel()
    assert len(calls) == 5


async def test_the_batch_loop_stops_when_a_step_swallowed_its_cancellation() -> None:
    # As Python 3.11's asyncio.wait_for (used inside pymongo) can: the
    # CancelledError is lost and the step returns normally. Without the
    # loop's own check it would run on for ever and shutdown would hang.
    entered = asyncio.Event()
    release = asyncio.Event()

    async def swallowing_step() -> int:
        entered.set()
        with contextlib.suppress(asyncio.CancelledError):  # swallowed
            await release.wait()
        return 1  # a full batch: the loop would go again at once

    stop = asyncio.Event()
    loop = BatchLoop(
        step=swallowing_step,
        wake=asyncio.Event(),
        batch_size=1,
        idle_seconds=30,
        max_backoff=0.01,
        log=logging.getLogger("test"),
        name="test loop",
        stop=stop,
    )
    task = asyncio.create_task(loop.run())
    async with asyncio.timeout(2):
        await entered.wait()
    stop.set()  # as its owner does before cancelling it
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=2)
    assert task in done

"""The live bus across processes, on a real Redis.

Two buses on two clients stand for two processes of the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import timedelta

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from adapters.redis.live_bus import RedisLiveBus
from chat_service.domain.content import Button, MessageContent, QuickReply
from chat_service.domain.enums import (
    ButtonType,
    ConversationStatus,
    DeliveryStatus,
    MessageRole,
    MessageType,
)
from chat_service.domain.live import (
    DeliveryChanged,
    LiveEvent,
    MessageStored,
    ReadThrough,
    StatusChanged,
    TypingChanged,
)
from chat_service.domain.model import ChannelMetadata
from tests.builders import T0, make_conversation, make_message
from tests.support.redis import RedisClients, RedisServer

Buses = Callable[..., Awaitable[RedisLiveBus]]


@pytest.fixture
async def buses(redis_clients: RedisClients, redis_prefix: str) -> AsyncIterator[Buses]:
    started: list[RedisLiveBus] = []

    async def start(url: str | None = None, **options: int) -> RedisLiveBus:
        bus = RedisLiveBus(redis_clients(url), prefix=redis_prefix, **options)
        await bus.start()
        started.append(bus)
        return bus

    yield start
    for bus in started:
        await bus.close()


class Heard:
    """A listener that keeps what it hears."""

    def __init__(self) -> None:
        self.events: list[LiveEvent] = []
        self._changed = asyncio.Event()

    def __call__(self, event: LiveEvent) -> None:
        self.events.append(event)
        self._changed.set()

    async def until(self, count: int, timeout: float = 5.0) -> list[LiveEvent]:
        async with asyncio.timeout(timeout):
            while len(self.events) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.events


async def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def every_kind_of_event() -> list[LiveEvent]:
    conversation = make_conversation()
    message = replace(
        make_message(conversation, 7, "héllo ✓"),
        content=MessageContent(
            type=MessageType.QUICK_REPLY,
            text="pick one",
            quick_replies=(QuickReply("Yes", "yes"),),
            buttons=(Button(ButtonType.URL, "Docs", url="https://example.com"),),
        ),
        client_time=T0 - timedelta(seconds=1),
        channel_metadata=ChannelMetadata(thread_id="th", additional_data={"k": [1, "x"]}),
        reply_to_message_id="m-0",
        fingerprint="f" * 64,
    )
    return [
        MessageStored(message),
        DeliveryChanged(message.message_id, 7, DeliveryStatus.DELIVERED),
        StatusChanged(ConversationStatus.ACTIVE, ConversationStatus.ESCALATED, "engine"),
        TypingChanged(MessageRole.USER, True, origin="stream-1"),
        ReadThrough(MessageRole.USER, 7, origin="stream-1"),
    ]


async def test_an_event_reaches_listeners_in_both_processes_exactly_once(
    buses: Buses,
) -> None:
    a, b = await buses(), await buses()
    here, there = Heard(), Heard()
    a.subscribe("topic", here)
    b.subscribe("topic", there)
    await a.synced()
    await b.synced()

    events = every_kind_of_event()
    for event in events:
        a.publish("topic", event)
    last = TypingChanged(MessageRole.BOT, False, origin="last")
    a.publish("topic", last)

    assert (await there.until(6))[:5] == events  # decoded equal, in order
    assert (await here.until(6))[:5] == events
    # Instead of waiting for time: an event published in the other process
    # once Redis had the first ones. Redis hands each subscriber its
    # messages in order, so any duplicate of them (through Redis, or echoed
    # locally as well) comes before it.
    later = TypingChanged(MessageRole.BOT, True, origin="later")
    b.publish("topic", later)
    assert (await there.until(7))[5:] == [last, later]
    assert (await here.until(7))[5:] == [last, later]


async def test_unsubscribed_listeners_hear_nothing_more(buses: Buses) -> None:
    a, b = await buses(), await buses()
    gone, staying = Heard(), Heard()
    unsubscribe = b.subscribe("topic", gone)
    b.subscribe("other", staying)
    await b.synced()

    unsubscribe()
    assert b.topics == 1
    a.publish("topic", TypingChanged(MessageRole.USER, True, origin="x"))
    a.publish("other", TypingChanged(MessageRole.USER, True, origin="marker"))

    await staying.until(1)  # published after the first, so delivered after it
    assert gone.events == []


async def test_topics_are_kept_apart(buses: Buses) -> None:
    a, b = await buses(), await buses()
    one, two = Heard(), Heard()
    b.subscribe("one", one)
    b.subscribe("two", two)
    await b.synced()
    first = TypingChanged(MessageRole.USER, True, origin="1")
    second = TypingChanged(MessageRole.USER, True, origin="2")
    a.publish("one", first)
    a.publish("two", second)
    assert await one.until(1) == [first]
    assert await two.until(1) == [second]


async def test_a_full_publish_queue_drops_and_counts(
    redis_clients: RedisClients, redis_prefix: str
) -> None:
    bus = RedisLiveBus(redis_clients(), prefix=redis_prefix, queue_size=3)  # not started
    for n in range(5):
        bus.publish("topic", TypingChanged(MessageRole.USER, True, origin=str(n)))
    assert bus.dropped == 2
    await bus.close()


async def test_publishing_while_redis_is_down_never_raises_and_the_bus_recovers(
    buses: Buses, disposable_redis: RedisServer
) -> None:
    a = await buses(disposable_redis.url)
    b = await buses(disposable_redis.url)
    heard = Heard()
    b.subscribe("topic", heard)
    await b.synced()

    disposable_redis.kill()
    for n in range(50):
        a.publish("topic", TypingChanged(MessageRole.USER, True, origin=str(n)))
    await eventually(lambda: a.dropped > 0 and not b.listening)  # both noticed
    assert heard.events == []

    disposable_redis.start()
    async with asyncio.timeout(10):
        await b.synced()  # the reader reconnected and subscribed again
    a.publish("topic", TypingChanged(MessageRole.USER, True, origin="after"))
    events = await heard.until(1, timeout=5)
    assert events[-1] == TypingChanged(MessageRole.USER, True, origin="after")


class _SwallowingPubSub:
    """A pub/sub connection whose connect loses the cancellation that
    interrupts it and reports a connection error instead, as redis-py's
    connect (through Python 3.11's asyncio.wait_for) can."""

    def __init__(self, connecting: asyncio.Event) -> None:
        self._connecting = connecting

    async def ping(self) -> None:
        self._connecting.set()
        with contextlib.suppress(asyncio.CancelledError):  # lost
            await asyncio.Event().wait()  # a connect that hangs
        raise RedisConnectionError("connection lost")

    async def aclose(self) -> None:
        return None


class _SwallowingRedis:
    def __init__(self) -> None:
        self.connecting = asyncio.Event()

    def pubsub(self) -> _SwallowingPubSub:
        return _SwallowingPubSub(self.connecting)


async def test_close_ends_the_subscriber_even_when_its_cancellation_is_swallowed() -> None:
    redis = _SwallowingRedis()
    bus = RedisLiveBus(redis)  # type: ignore[arg-type]  # only pubsub() is used here
    await bus.start()
    async with asyncio.timeout(2):
        await redis.connecting.wait()
    async with asyncio.timeout(3):  # it would retry for ever
        await bus.close(flush_timeout=0.1)


async def test_a_confirmation_read_while_subscribe_returns_still_counts(
    redis_clients: RedisClients, redis_prefix: str
) -> None:
    # Under load the reader can take Redis's "subscribe" confirmation before
    # subscribe() has returned to the task that sent it. A stand-in for the
    # pub/sub connection makes that order certain.
    bus = RedisLiveBus(redis_clients(), prefix=redis_prefix)
    bus.subscribe("topic", Heard())

    class ConfirmingFirst:
        async def subscribe(self, *channels: str) -> None:
            for channel in channels:
                await bus._handle({"type": "subscribe", "channel": channel})

    syncing = asyncio.create_task(bus._sync_subscriptions(ConfirmingFirst()))  # type: ignore[arg-type]
    try:
        await asyncio.wait_for(bus.synced(), 5)
    finally:
        syncing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await syncing
    assert bus.listening

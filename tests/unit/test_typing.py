"""Typing indicators on streams: coalesced (the latest state wins), rate
limited per stream, and never the reason a peer's stream ends."""

from __future__ import annotations

import asyncio

import pytest

from chat_service.domain.enums import DeliveryStatus, MessageRole
from chat_service.domain.live import DeliveryChanged, LiveEvent, TypingChanged, conversation_topic
from chat_service.pipeline.conversation_stream import ConversationStream, StreamItem
from chat_service.pipeline.stream_opener import StreamOpenRequest
from tests.builders import TENANT
from tests.unit.test_conversation_stream import World, _conversation_with, _take, build

INTERVAL = 0.05


async def _join(world: World, conversation_id: str) -> ConversationStream:
    return await world.streams.open(TENANT, StreamOpenRequest(conversation_id=conversation_id))


def _typing(items: list[StreamItem]) -> list[bool]:
    return [item.typing for item in items if isinstance(item, TypingChanged)]


async def test_a_flood_of_flips_reaches_a_peer_as_the_first_and_the_latest_state() -> None:
    world = build(typing_interval=INTERVAL)
    conversation = await _conversation_with(world.store, 1)
    typist = await _join(world, conversation.conversation_id)
    peer = await _join(world, conversation.conversation_id)
    items = peer.items()
    await _take(items, 1)  # opened

    for n in range(100):  # true, false, true, ... false: all within one interval
        typist.typing(n % 2 == 0)

    assert _typing(await _take(items, 2)) == [True, False]  # at once, then the latest
    # Nothing else comes: the next item is the next event, not another flip.
    marker = DeliveryChanged("m", 1, DeliveryStatus.READ)
    world.bus.publish(conversation_topic(TENANT, conversation.conversation_id), marker)
    assert await _take(items, 1) == [marker]
    typist.close()
    peer.close()


async def test_typing_is_rate_limited_per_stream() -> None:
    world = build(typing_interval=INTERVAL)
    conversation = await _conversation_with(world.store, 1)
    typist = await _join(world, conversation.conversation_id)
    published: list[bool] = []

    def heard(event: LiveEvent) -> None:
        if isinstance(event, TypingChanged):
            published.append(event.typing)

    world.bus.subscribe(conversation_topic(TENANT, conversation.conversation_id), heard)
    loop = asyncio.get_running_loop()
    started = loop.time()
    state = False
    while loop.time() - started < 6 * INTERVAL:  # a frame every ~2 ms
        state = not state
        typist.typing(state)
        await asyncio.sleep(0.002)
    elapsed = loop.time() - started
    await asyncio.sleep(2 * INTERVAL)  # the last word goes out at the end of its interval

    assert 2 <= len(published) <= elapsed / INTERVAL + 2
    assert published[-1] is state
    typist.close()


async def test_a_repeated_state_is_not_republished_within_the_interval() -> None:
    world = build(typing_interval=INTERVAL)
    conversation = await _conversation_with(world.store, 1)
    typist = await _join(world, conversation.conversation_id)
    peer = await _join(world, conversation.conversation_id)
    items = peer.items()
    await _take(items, 1)

    for _ in range(20):
        typist.typing(True)
    await asyncio.sleep(2 * INTERVAL)
    marker = DeliveryChanged("m", 1, DeliveryStatus.READ)
    world.bus.publish(conversation_topic(TENANT, conversation.conversation_id), marker)

    got = await _take(items, 2)
    assert _typing(got) == [True]  # once, the repeats within its interval dropped
    assert marker in got
    typist.close()
    peer.close()


@pytest.mark.parametrize("reads_opened_first", [True, False])
async def test_typing_never_ends_a_slow_peers_stream(reads_opened_first: bool) -> None:
    world = build(buffer_size=2)
    conversation = await _conversation_with(world.store, 1)
    topic = conversation_topic(TENANT, conversation.conversation_id)
    slow = await _join(world, conversation.conversation_id)
    items = slow.items()
    if reads_opened_first:
        await _take(items, 1)

    # Far more indicators than its buffer holds, from many other streams (in
    # any process: the bus does not go through their throttles), while the
    # slow peer reads nothing.
    for n in range(50):
        world.bus.publish(topic, TypingChanged(MessageRole.USER, n % 2 == 0, origin=f"s-{n}"))
    marker = DeliveryChanged("m", 1, DeliveryStatus.READ)
    world.bus.publish(topic, marker)

    got = await _take(items, 2 if reads_opened_first else 3)
    assert got[-2:] == [marker, TypingChanged(MessageRole.USER, False, origin="s-49")]
    assert world.bus.topics == 1  # still listening: the stream goes on
    world.bus.publish(topic, marker)
    assert await _take(items, 1) == [marker]
    slow.close()

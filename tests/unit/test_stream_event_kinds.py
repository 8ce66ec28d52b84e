"""A stream that carries some kinds of live event only, on fakes: what it
drops never fills its buffer, and its resume position never skips a message
its client was not sent."""

from __future__ import annotations

import pytest

from chat_service.domain.enums import ConversationStatus, DeliveryStatus
from chat_service.domain.errors import Unavailable
from chat_service.domain.live import (
    DeliveryChanged,
    MessageStored,
    StatusChanged,
    conversation_topic,
)
from chat_service.pipeline.conversation_stream import EventKind, Opened
from chat_service.pipeline.stream_opener import StreamOpenRequest
from tests.builders import TENANT, build_core, make_message, update_change
from tests.unit.test_conversation_stream import _conversation_with, _sequences, _take, build


async def test_dropped_kinds_take_no_room_and_the_resume_position_skips_no_message() -> None:
    world = build(buffer_size=4)
    conversation = await _conversation_with(world.store, 1)
    stream = await world.streams.open(
        TENANT,
        StreamOpenRequest(
            conversation_id=conversation.conversation_id,
            event_kinds=frozenset({EventKind.STATUS}),
        ),
    )
    items = stream.items()
    assert isinstance((await _take(items, 1))[0], Opened)
    topic = conversation_topic(TENANT, conversation.conversation_id)

    # More than the buffer holds, of kinds the client did not ask for.
    messages = [make_message(conversation, sequence) for sequence in range(2, 12)]
    await world.store.write(update_change(conversation, messages))
    for message in messages:
        world.bus.publish(topic, MessageStored(message))
        world.bus.publish(topic, DeliveryChanged("m", message.sequence, DeliveryStatus.DELIVERED))
    change = StatusChanged(ConversationStatus.ACTIVE, ConversationStatus.ESCALATED, "")
    world.bus.publish(topic, change)

    assert await _take(items, 1) == [change]
    world.streams.close_all(lambda: Unavailable("draining", reason="SERVER_DRAINING"))
    with pytest.raises(Unavailable) as ended:
        await _take(items, 1)
    stream.close()

    # Messages 2..11 went by unsent: the ending position is where the stream
    # started, so a stream that asks for messages from there gets them all.
    resume_after = int(ended.value.metadata["resume_after_sequence"])
    assert resume_after == 1
    # (Another server on the same store: this one drains.)
    again = await build_core(store=world.store, bus=world.bus).streams.open(
        TENANT,
        StreamOpenRequest(
            conversation_id=conversation.conversation_id,
            resume_after=resume_after,
            event_kinds=frozenset({EventKind.MESSAGE}),
        ),
    )
    assert _sequences(await _take(again.items(), 11)) == list(range(2, 12))
    again.close()

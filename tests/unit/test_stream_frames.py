"""Live events' frames are built once and shared by the streams that carry them."""

from __future__ import annotations

import asyncio
import typing
from collections.abc import AsyncIterator

import pytest
from chatbot.chat.v1 import chat_service_pb2 as pb
from chatbot.chat.v1 import resources_pb2

from chat_service.auth import Principal
from chat_service.domain.events import OutboxEntry
from chat_service.domain.live import LiveEvent, MessageStored, conversation_topic
from chat_service.grpc_api import streaming
from chat_service.grpc_api.auth_interceptor import bound_principal
from chat_service.grpc_api.streaming import StreamFrames, stream_conversation
from chat_service.pipeline.page_tokens import PageTokens
from chat_service.protomap.resources import message_to_proto
from tests.builders import TENANT, make_message
from tests.unit.test_conversation_stream import _conversation_with, build


async def _client_frames(conversation_id: str) -> AsyncIterator[pb.StreamConversationRequest]:
    yield pb.StreamConversationRequest(open=pb.StreamOpen(conversation_id=conversation_id))
    await asyncio.Event().wait()  # sends nothing more; the stream stays open


async def test_two_streams_on_one_conversation_share_one_built_frame(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    world = build()
    conversation = await _conversation_with(world.store, 1)
    built: list[resources_pb2.Message] = []

    def counted(message):  # type: ignore[no-untyped-def]
        built.append(message_to_proto(message))
        return built[-1]

    monkeypatch.setattr("chat_service.grpc_api.streaming.message_proto", counted)
    shared = StreamFrames(PageTokens.ephemeral())
    with bound_principal(Principal(TENANT, "tester", frozenset())):
        phone, laptop = (
            stream_conversation(
                _client_frames(conversation.conversation_id),
                world.streams,
                TENANT,
                error_domain="test",
                shared=shared,
            )
            for _ in range(2)
        )
        async with asyncio.timeout(2):
            assert (await anext(phone)).WhichOneof("event") == "opened"
            assert (await anext(laptop)).WhichOneof("event") == "opened"
            message = make_message(conversation, 2)  # the next one, live
            world.bus.publish(
                conversation_topic(TENANT, conversation.conversation_id), MessageStored(message)
            )
            on_phone = await anext(phone)
            on_laptop = await anext(laptop)
        await phone.aclose()  # type: ignore[attr-defined]
        await laptop.aclose()  # type: ignore[attr-defined]

    assert on_phone is on_laptop
    assert len(built) == 1
    assert on_phone.message.message_id == message.message_id
    assert world.streams.open_count == 0


class _Event:
    """A weakly referenceable event."""


def test_a_frame_is_kept_as_long_as_its_event_lives() -> None:
    builds: list[_Event] = []

    def build_frame(event: _Event) -> object:
        builds.append(event)
        return object()

    frames = streaming.SharedFrames(build_frame)
    first, second = _Event(), _Event()
    first_frame = frames.frame(first)
    assert frames.frame(first) is first_frame
    assert frames.frame(second) is not first_frame
    assert len(frames) == 2

    builds.clear()
    del first  # no stream holds it any more: its frame goes with it
    assert len(frames) == 1
    assert frames.frame(second) is not first_frame
    assert builds == []


def test_every_live_event_and_outbox_entry_can_be_shared() -> None:
    # A frame is shared through a weak reference to its event: a type without
    # a weakref slot would be built once per stream again, silently.
    for event_type in (*typing.get_args(LiveEvent), OutboxEntry):
        assert event_type.__weakrefoffset__, f"{event_type.__name__} has no weakref slot"


def test_an_event_that_cannot_be_weakly_referenced_still_gets_its_frame() -> None:
    frames: streaming.SharedFrames[int, tuple[str, int]] = streaming.SharedFrames(
        lambda event: ("frame of", event)
    )
    assert frames.frame(7) == ("frame of", 7)  # an int has no weakref slot
    assert len(frames) == 0

"""Streams and watches that ask for some kinds of event only, over real gRPC
against the real service process (StreamOpen.event_kinds,
WatchConversationsRequest.event_types)."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest
from chatbot.chat.v1 import chat_service_pb2 as pb
from chatbot.chat.v1 import chat_service_pb2_grpc, content_pb2, resources_pb2

from tests.e2e.test_watch_and_export import Watcher, _started
from tests.support.grpc_client import Metadata, bearer, rich_error, text_request
from tests.support.service import ServiceProcess
from tests.support.streams import StreamClient

EVERY_EVENT = {"message", "delivery", "typing", "read", "status"}


@pytest.fixture
def auth(service: ServiceProcess) -> Metadata:
    return bearer(service.token(f"tenant-{uuid.uuid4().hex[:8]}"))


async def kinds_until_message(client: StreamClient, message_id: str) -> list[str]:
    """The kinds of the frames received up to the message `message_id`."""
    kinds = []
    while True:
        frame = await client.next()
        kinds.append(str(frame.WhichOneof("event")))
        if kinds[-1] == "message" and frame.message.message_id == message_id:
            return kinds


async def test_a_stream_gets_only_the_kinds_it_asked_for_and_empty_means_all(
    stub: chat_service_pb2_grpc.ChatServiceAsyncStub, auth: Metadata
) -> None:
    actor = StreamClient(stub, auth)
    conversation_id = (await actor.open()).conversation.conversation_id
    only_messages = StreamClient(stub, auth)
    await only_messages.open(
        event_kinds=[pb.STREAM_EVENT_KIND_MESSAGE], conversation_id=conversation_id
    )
    everything = StreamClient(stub, auth)
    await everything.open(event_kinds=[], conversation_id=conversation_id)

    # One event of every kind, then a last message that marks the end.
    # Typing first, taken before anything else is queued: a queued typing
    # indicator goes out after the regular frames (stream_buffer), so it
    # could come after the last message on a loaded machine.
    actor.send(typing=pb.TypingIndicator(typing=True))
    assert (await everything.next()).WhichOneof("event") == "typing"
    actor.say("hi", "k-1")
    await actor.messages_through(2)
    actor.send(read=pb.ReadReceipt(read_through_sequence=2))
    await actor.next_of("delivery")  # the receipt was taken
    await stub.UpdateConversationStatus(
        pb.UpdateConversationStatusRequest(
            conversation_id=conversation_id, status=resources_pb2.CONVERSATION_STATUS_ESCALATED
        ),
        metadata=auth,
    )
    await stub.SendMessage(
        text_request("the end", conversation_id=conversation_id, message_id="k-end"),
        metadata=auth,
    )

    assert set(await kinds_until_message(everything, "k-end")) == EVERY_EVENT - {"typing"}
    assert set(await kinds_until_message(only_messages, "k-end")) == {"message"}
    for client in (actor, only_messages, everything):
        client.cancel()


async def test_acks_and_errors_arrive_whatever_the_kinds(
    stub: chat_service_pb2_grpc.ChatServiceAsyncStub, auth: Metadata
) -> None:
    client = StreamClient(stub, auth)
    opened = await client.open(event_kinds=[pb.STREAM_EVENT_KIND_STATUS])
    client.send(
        message=pb.StreamMessage(
            message_id="bad-1",
            content=content_pb2.MessageContent(type=content_pb2.MESSAGE_TYPE_TEXT, text=""),
        )
    )
    refused = await client.next()
    assert refused.WhichOneof("event") == "error", refused
    assert refused.error.message_id == "bad-1"

    client.say("a good one", "good-1")
    acked = await client.next()  # not the message itself, nor the bot's reply
    assert acked.WhichOneof("event") == "ack", acked
    assert (acked.ack.message_id, acked.ack.sequence) == ("good-1", 1)
    await stub.UpdateConversationStatus(
        pb.UpdateConversationStatusRequest(
            conversation_id=opened.conversation.conversation_id,
            status=resources_pb2.CONVERSATION_STATUS_ESCALATED,
        ),
        metadata=auth,
    )
    status = await client.next()
    assert status.WhichOneof("event") == "status", status
    client.cancel()


async def test_a_resume_replays_messages_when_they_are_asked_for(
    stub: chat_service_pb2_grpc.ChatServiceAsyncStub, auth: Metadata
) -> None:
    sent = await stub.SendMessage(text_request("before"), metadata=auth)
    conversation_id = sent.conversation_id

    with_messages = StreamClient(stub, auth)
    await with_messages.open(
        event_kinds=[pb.STREAM_EVENT_KIND_MESSAGE], conversation_id=conversation_id, resume_after=0
    )
    replayed = await with_messages.messages_through(2)
    assert [m.sequence for m in replayed] == [1, 2]

    # Without messages nothing is replayed: the first frame after `opened`
    # is the status change made after the stream opened.
    without = StreamClient(stub, auth)
    await without.open(
        event_kinds=[pb.STREAM_EVENT_KIND_STATUS], conversation_id=conversation_id, resume_after=0
    )
    await stub.UpdateConversationStatus(
        pb.UpdateConversationStatusRequest(
            conversation_id=conversation_id, status=resources_pb2.CONVERSATION_STATUS_ESCALATED
        ),
        metadata=auth,
    )
    first = await without.next()
    assert first.WhichOneof("event") == "status", first
    with_messages.cancel()
    without.cancel()


async def test_a_client_can_leave_out_its_own_messages(
    stub: chat_service_pb2_grpc.ChatServiceAsyncStub, auth: Metadata
) -> None:
    me = StreamClient(stub, auth)
    opened = await me.open(event_kinds=[pb.STREAM_EVENT_KIND_MESSAGE], omit_own=True)
    conversation_id = opened.conversation.conversation_id
    # The same user on another device, leaving out its own messages too:
    # "own" is what a stream sent itself, so it still gets mine.
    peer = StreamClient(stub, auth)
    await peer.open(
        event_kinds=[pb.STREAM_EVENT_KIND_MESSAGE], conversation_id=conversation_id, omit_own=True
    )

    me.say("hi", "own-1")
    answers = {frame.WhichOneof("event"): frame for frame in [await me.next(), await me.next()]}
    assert set(answers) == {"ack", "message"}  # the ack and the reply, not the message itself
    assert (answers["ack"].ack.message_id, answers["ack"].ack.sequence) == ("own-1", 1)
    reply = answers["message"].message
    assert (reply.sequence, reply.role) == (2, resources_pb2.MESSAGE_ROLE_BOT)
    me.say("hi", "own-1")  # a retry: acknowledged, nothing new
    again = await me.next()
    assert (again.ack.message_id, again.ack.duplicate) == ("own-1", True)

    # Messages from elsewhere still come, in sequence, and others see mine.
    await stub.SendMessage(
        text_request("from the api", conversation_id=conversation_id, message_id="api-1"),
        metadata=auth,
    )
    from_the_api = await me.messages_through(3)
    assert [(m.sequence, m.message_id) for m in from_the_api] == [(3, "api-1")]
    seen_by_peer = await peer.messages_through(3)
    assert [m.message_id for m in seen_by_peer] == ["own-1", reply.message_id, "api-1"]
    me.cancel()
    peer.cancel()


@pytest.mark.parametrize(
    ("kinds", "field"),
    [
        ([pb.STREAM_EVENT_KIND_UNSPECIFIED], "open.event_kinds[0]"),
        ([pb.STREAM_EVENT_KIND_MESSAGE, 99], "open.event_kinds[1]"),
        ([pb.STREAM_EVENT_KIND_TYPING, -1], "open.event_kinds[1]"),
    ],
)
async def test_an_unknown_kind_is_invalid_argument_naming_it(
    stub: chat_service_pb2_grpc.ChatServiceAsyncStub,
    auth: Metadata,
    kinds: list[int],
    field: str,
) -> None:
    client = StreamClient(stub, auth)
    client.send(
        open=pb.StreamOpen(
            user_id="user-1",
            channel=resources_pb2.CHANNEL_WEB,
            event_kinds=kinds,  # type: ignore[arg-type]
        )
    )
    received, error = await client.until_error()
    assert received == []
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert rich_error(error).fields == [field]


async def test_an_unknown_kind_is_reported_with_the_other_fields_problems(
    stub: chat_service_pb2_grpc.ChatServiceAsyncStub, auth: Metadata
) -> None:
    client = StreamClient(stub, auth)
    client.send(
        open=pb.StreamOpen(
            user_id="bob\x00",
            channel=resources_pb2.CHANNEL_WEB,
            event_kinds=[pb.STREAM_EVENT_KIND_MESSAGE, 99],  # type: ignore[list-item]
        )
    )
    _, error = await client.until_error()
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert sorted(rich_error(error).fields) == ["open.event_kinds[1]", "open.user_id"]


async def test_a_watch_gets_only_the_event_types_it_asked_for(
    stub: chat_service_pb2_grpc.ChatServiceAsyncStub, auth: Metadata
) -> None:
    watcher = Watcher(stub, auth, event_types=["message.sent"])
    everything = Watcher(stub, auth)
    await _started(watcher)
    await _started(everything)

    first = await stub.SendMessage(text_request("one"), metadata=auth)
    second = await stub.SendMessage(text_request("two"), metadata=auth)

    # conversation.started, message.received and message.sent, twice.
    assert len(await everything.until(6)) == 6
    sent = await watcher.until(2)
    assert [(e.event.event_type, e.event.message_id) for e in sent] == [
        ("message.sent", first.replies[0].message_id),
        ("message.sent", second.replies[0].message_id),
    ]
    await watcher.stop()
    await everything.stop()


async def test_an_unknown_watch_event_type_is_invalid_argument_naming_it(
    stub: chat_service_pb2_grpc.ChatServiceAsyncStub, auth: Metadata
) -> None:
    watcher = Watcher(stub, auth, event_types=["message.sent", "message.exploded"])
    error = await watcher.error()
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert rich_error(error).fields == ["event_types[1]"]


# A flood: the bound is the stream's buffer, and nx-27017 (a pure-Python
# MongoDB) would take minutes over it.
@pytest.mark.heavy_load
async def test_a_slow_reader_is_not_ended_for_kinds_it_did_not_ask_for(
    fresh_service: ServiceProcess,
) -> None:
    fresh_service.extra_env.update(
        {
            "STREAM_BUFFER_SIZE": "2",
            # The control reads again only after the flood; it gets its status then.
            "STREAM_STALL_GRACE_SECONDS": "120",
            "RATE_LIMIT_PER_SECOND": "100000",
            "RATE_LIMIT_BURST": "100000",
        }
    )
    fresh_service.start()
    auth = bearer(fresh_service.token("acme"))
    # 1200 messages of 16 KB: far more than gRPC's flow-control windows hold
    # (about 260 of them went out before the control's buffer filled here),
    # so a stalled stream that carried them fills its buffer.
    flood, text = 1200, "\N{GRINNING FACE}" * 4000
    async with grpc.aio.insecure_channel(fresh_service.address) as channel:
        stub = chat_service_pb2_grpc.ChatServiceStub(channel)
        first = await stub.SendMessage(text_request("start"), metadata=auth)
        conversation_id = first.conversation_id
        # Both read nothing during the flood: one carries every kind (the
        # control: the flood does fill a buffer), one status changes only.
        control = StreamClient(stub, auth)
        await control.open(event_kinds=[], conversation_id=conversation_id)
        statuses_only = StreamClient(stub, auth)
        await statuses_only.open(
            event_kinds=[pb.STREAM_EVENT_KIND_STATUS], conversation_id=conversation_id
        )

        request = text_request(
            text,
            conversation_id=conversation_id,
            processing_hints=resources_pb2.ProcessingHints(bypass_automation=True),
        )
        for _ in range(0, flood, 50):
            await asyncio.gather(*(stub.SendMessage(request, metadata=auth) for _ in range(50)))
        await stub.UpdateConversationStatus(
            pb.UpdateConversationStatusRequest(
                conversation_id=conversation_id,
                status=resources_pb2.CONVERSATION_STATUS_ESCALATED,
            ),
            metadata=auth,
        )

        _, ended = await control.until_error(timeout=60)
        assert rich_error(ended).reason == "STREAM_BUFFER_FULL"
        status = await statuses_only.next(timeout=60)
        assert status.WhichOneof("event") == "status", status
        assert status.status.to_status == resources_pb2.CONVERSATION_STATUS_ESCALATED
        statuses_only.cancel()

"""StreamConversation over real gRPC against the real service process."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest
from chatbot.chat.v1 import chat_service_pb2 as pb
from chatbot.chat.v1 import chat_service_pb2_grpc, content_pb2, resources_pb2
from google.rpc import error_details_pb2  # type: ignore[import-untyped, unused-ignore]

from chat_service.auth import SCOPE_READ
from tests.support.grpc_client import Metadata, bearer, rich_error, text_request
from tests.support.service import ServiceProcess
from tests.support.streams import StreamClient


def tenant() -> str:
    return f"tenant-{uuid.uuid4().hex[:8]}"


def ids(messages: list[resources_pb2.Message]) -> list[tuple[int, str]]:
    return [(m.sequence, m.message_id) for m in messages]


@pytest.fixture
def auth(service: ServiceProcess) -> Metadata:
    return bearer(service.token(tenant()))


async def test_open_send_and_get_the_reply(
    stub: chat_service_pb2_grpc.ChatServiceAsyncStub, auth: Metadata
) -> None:
    client = StreamClient(stub, auth)
    opened = await client.open(user_id="alice")
    assert opened.conversation.conversation_id
    assert opened.conversation.status == resources_pb2.CONVERSATION_STATUS_ACTIVE
    assert opened.replay_through_sequence == 0

    client.say("hello", "s-1")

    mine = await client.next_of("message")
    reply = await client.next_of("message")
    ack = await client.next_of("ack")
    assert (mine.sequence, mine.message_id, mine.content.text) == (1, "s-1", "hello")
    assert (reply.sequence, reply.role) == (2, resources_pb2.MESSAGE_ROLE_BOT)
    assert reply.reply_to_message_id == "s-1"
    assert (ack.message_id, ack.sequence, ack.duplicate) == ("s-1", 1, False)

    client.say("hello", "s-1")  # a retry: acknowledged as a duplicate, nothing new
    again = await client.next_of("ack")
    assert (again.sequence, again.duplicate) == (1, True)
    client.cancel()


async def test_two_streams_on_one_conversation_see_the_same_sequence(
    stub: chat_service_pb2_grpc.ChatServiceAsyncStub, auth: Metadata
) -> None:
    phone = StreamClient(stub, auth)
    opened = await phone.open()
    conversation_id = opened.conversation.conversation_id
    laptop = StreamClient(stub, auth)
    await laptop.open(conversation_id=conversation_id)

    for n in range(4):
        phone.say(f"from the phone {n}", f"p-{n}")
    await stub.SendMessage(
        text_request("from the api", conversation_id=conversation_id), metadata=auth
    )

    on_phone = await phone.messages_through(10)
    on_laptop = await laptop.messages_through(10)
    assert ids(on_phone) == ids(on_laptop)
    assert [m.sequence for m in on_phone] == list(range(1, 11))
    phone.cancel()
    laptop.cancel()


async def test_a_dropped_stream_resumes_without_gap_or_repeat(
    stub: chat_service_pb2_grpc.ChatServiceAsyncStub, auth: Metadata
) -> None:
    first = StreamClient(stub, auth)
    conversation_id = (await first.open()).conversation.conversation_id
    for n in range(3):
        first.say(f"before {n}", f"b-{n}")
    seen = await first.messages_through(6)
    first.cancel()  # the connection drops

    for n in range(3):  # the conversation goes on meanwhile
        await stub.SendMessage(
            text_request(f"while away {n}", conversation_id=conversation_id), metadata=auth
        )

    resumed = StreamClient(stub, auth)
    opened = await resumed.open(conversation_id=conversation_id, resume_after=seen[-1].sequence)
    assert opened.replay_through_sequence == 12
    await stub.SendMessage(
        text_request("after the reconnect", conversation_id=conversation_id), metadata=auth
    )
    after = await resumed.messages_through(14)

    everything = await stub.ListMessages(
        pb.ListMessagesRequest(conversation_id=conversation_id), metadata=auth
    )
    assert ids(seen) + ids(after) == ids(list(everything.messages))
    resumed.cancel()


async def test_replies_from_unary_calls_reach_open_streams(
    stub: chat_service_pb2_grpc.ChatServiceAsyncStub, auth: Metadata
) -> None:
    client = StreamClient(stub, auth)
    conversation_id = (await client.open()).conversation.conversation_id

    sent = await stub.SendMessage(
        text_request("via SendMessage", conversation_id=conversation_id), metadata=auth
    )

    streamed = await client.messages_through(2)
    assert [m.message_id for m in streamed] == [sent.message_id, sent.replies[0].message_id]
    client.cancel()


async def test_a_bad_message_is_an_error_event_and_the_stream_goes_on(
    stub: chat_service_pb2_grpc.ChatServiceAsyncStub, auth: Metadata
) -> None:
    client = StreamClient(stub, auth)
    await client.open()

    client.send(
        message=pb.StreamMessage(
            message_id="bad-1",
            content=content_pb2.MessageContent(type=content_pb2.MESSAGE_TYPE_TEXT, text=""),
        )
    )
    error = await client.next_of("error")
    client.say("now a good one", "good-1")
    ack = await client.next_of("ack")

    assert error.message_id == "bad-1"
    assert error.status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    violations: list[str] = []
    for detail in error.status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations.extend(v.field for v in bad.field_violations)
    assert violations == ["message.content.text"]
    assert (ack.message_id, ack.sequence) == ("good-1", 1)
    client.cancel()


async def test_a_message_without_id_is_refused_on_a_stream(
    stub: chat_service_pb2_grpc.ChatServiceAsyncStub, auth: Metadata
) -> None:
    client = StreamClient(stub, auth)
    await client.open()

    client.say("no id", "")
    error = await client.next_of("error")

    assert error.status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    client.cancel()


@pytest.mark.parametrize(
    ("frames", "field"),
    [
        ([{"typing": pb.TypingIndicator(typing=True)}], "open"),
        ([{"open": pb.StreamOpen(user_id="u", channel=resources_pb2.CHANNEL_WEB)}] * 2, "open"),
        ([{"open": pb.StreamOpen(channel=resources_pb2.CHANNEL_WEB)}], "open.user_id"),
        ([{"open": pb.StreamOpen(user_id="u")}], "open.channel"),
    ],
)
async def test_protocol_errors_end_the_stream(
    stub: chat_service_pb2_grpc.ChatServiceAsyncStub,
    auth: Metadata,
    frames: list[dict[str, object]],
    field: str,
) -> None:
    client = StreamClient(stub, auth)
    for frame in frames:
        client.send(**frame)

    _, ended = await client.until_error()

    error = rich_error(ended)
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert error.fields == [field]


async def test_another_tenants_conversation_cannot_be_joined(
    service: ServiceProcess, stub: chat_service_pb2_grpc.ChatServiceAsyncStub, auth: Metadata
) -> None:
    theirs = await stub.SendMessage(text_request("mine"), metadata=auth)
    intruder = StreamClient(stub, bearer(service.token(tenant())))
    intruder.send(open=pb.StreamOpen(conversation_id=theirs.conversation_id))

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await intruder.next()

    assert rich_error(caught.value).reason == "CONVERSATION_NOT_FOUND"


async def test_a_read_only_token_cannot_stream(
    service: ServiceProcess, stub: chat_service_pb2_grpc.ChatServiceAsyncStub
) -> None:
    # Refused on the call's metadata, before any frame. The client sends none:
    # a frame in flight when the server ends the call can fail on the client's
    # side first (INTERNAL "execute_batch") and hide the server's status.
    client = StreamClient(stub, bearer(service.token(tenant(), scopes=[SCOPE_READ])))

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.next()

    assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED


async def test_typing_and_read_receipts_reach_the_other_streams(
    stub: chat_service_pb2_grpc.ChatServiceAsyncStub, auth: Metadata
) -> None:
    user = StreamClient(stub, auth)
    conversation_id = (await user.open()).conversation.conversation_id
    agent_view = StreamClient(stub, auth)
    await agent_view.open(conversation_id=conversation_id)

    user.send(typing=pb.TypingIndicator(typing=True))
    typing = await agent_view.next_of("typing")
    assert (typing.role, typing.typing) == (resources_pb2.MESSAGE_ROLE_USER, True)

    user.say("hi", "r-1")
    await user.messages_through(2)
    user.send(read=pb.ReadReceipt(read_through_sequence=2))
    delivery = await agent_view.next_of("delivery")
    read = await agent_view.next_of("read")

    assert (delivery.sequence, delivery.status) == (2, resources_pb2.DELIVERY_STATUS_READ)
    assert read.read_through_sequence == 2
    listed = await stub.ListMessages(
        pb.ListMessagesRequest(conversation_id=conversation_id), metadata=auth
    )
    assert listed.messages[1].delivery_status == resources_pb2.DELIVERY_STATUS_READ
    # The user's own stream hears the delivery change, not its own receipt.
    assert (await user.next_of("delivery")).sequence == 2
    user.send(read=pb.ReadReceipt(read_through_sequence=99))
    refused = await user.next_of("error")
    assert refused.status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    user.cancel()
    agent_view.cancel()


async def test_status_changes_reach_the_stream(
    stub: chat_service_pb2_grpc.ChatServiceAsyncStub, auth: Metadata
) -> None:
    client = StreamClient(stub, auth)
    conversation_id = (await client.open()).conversation.conversation_id

    await stub.UpdateConversationStatus(
        pb.UpdateConversationStatusRequest(
            conversation_id=conversation_id,
            status=resources_pb2.CONVERSATION_STATUS_ESCALATED,
            reason="angry customer",
        ),
        metadata=auth,
    )
    change = await client.next_of("status")

    assert change.from_status == resources_pb2.CONVERSATION_STATUS_ACTIVE
    assert change.to_status == resources_pb2.CONVERSATION_STATUS_ESCALATED
    assert change.reason == "angry customer"
    client.cancel()


async def test_a_hundred_streams_each_get_their_own_replies(
    service: ServiceProcess, stub: chat_service_pb2_grpc.ChatServiceAsyncStub
) -> None:
    clients = [StreamClient(stub, bearer(service.token(tenant()))) for _ in range(100)]
    opened = await asyncio.gather(*(c.open(user_id=f"user-{i}") for i, c in enumerate(clients)))

    for i, client in enumerate(clients):
        client.say(f"I am number {i}", f"n-{i}")
    received = await asyncio.gather(*(c.messages_through(2, timeout=30) for c in clients))

    for i, (client, start, messages) in enumerate(zip(clients, opened, received, strict=True)):
        conversation_id = start.conversation.conversation_id
        assert {m.conversation_id for m in messages} == {conversation_id}
        assert [m.message_id for m in messages] == [f"n-{i}", f"n-{i}/reply-1"]
        assert messages[1].content.text == f"You said: I am number {i}"
        client.cancel()


async def test_a_flood_of_typing_flips_reaches_peers_throttled_with_the_last_word(
    stub: chat_service_pb2_grpc.ChatServiceAsyncStub, auth: Metadata
) -> None:
    # Takes about a second: the last word goes out at the end of the
    # typing interval (one second).
    typist = StreamClient(stub, auth)
    conversation_id = (await typist.open()).conversation.conversation_id
    peer = StreamClient(stub, auth)
    await peer.open(conversation_id=conversation_id)

    for n in range(200):  # true, false, true, ... false
        typist.send(typing=pb.TypingIndicator(typing=n % 2 == 0))
    typist.say("no id", "")  # refused: once answered, the flood was handled
    await typist.next_of("error")
    sent = await stub.SendMessage(
        text_request("after the flood", conversation_id=conversation_id), metadata=auth
    )

    typing: list[bool] = []
    messages: list[str] = []
    while len(messages) < 2 or typing[-1:] != [False]:
        response = await peer.next(timeout=5)
        if response.HasField("typing"):
            typing.append(response.typing.typing)
        elif response.HasField("message"):
            messages.append(response.message.message_id)
    assert typing == [True, False]  # the first at once, the last word a second later
    assert messages == [sent.message_id, sent.replies[0].message_id]
    typist.cancel()
    peer.cancel()

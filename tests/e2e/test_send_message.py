"""SendMessage over real gRPC against the real service process."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest
from chatbot.chat.v1 import chat_service_pb2 as pb
from chatbot.chat.v1 import chat_service_pb2_grpc, resources_pb2

from tests.support.engine_server import running_engine
from tests.support.grpc_client import bearer, rich_error, text_request
from tests.support.net import free_port
from tests.support.service import ServiceProcess


def tenant() -> str:
    return f"tenant-{uuid.uuid4().hex[:8]}"


async def test_reply_is_stored_after_the_message(
    service: ServiceProcess, stub: chat_service_pb2_grpc.ChatServiceAsyncStub
) -> None:
    auth = bearer(service.token(tenant()))

    reply = await stub.SendMessage(text_request("hello", message_id="m-1"), metadata=auth)

    assert reply.message_id == "m-1"
    assert reply.processing_metadata.engine == "builtin"
    assert reply.processing_metadata.sequence == 1
    assert list(reply.processing_metadata.reply_sequences) == [2]
    assert reply.response.text.startswith("Hello")
    assert reply.conversation_state.current_intent == "greeting"
    listed = await stub.ListMessages(
        pb.ListMessagesRequest(conversation_id=reply.conversation_id), metadata=auth
    )
    assert [(m.sequence, m.role) for m in listed.messages] == [
        (1, resources_pb2.MESSAGE_ROLE_USER),
        (2, resources_pb2.MESSAGE_ROLE_BOT),
    ]
    assert listed.messages[0].content.text == "hello"


async def test_retry_returns_the_same_result_and_stores_nothing_new(
    service: ServiceProcess, stub: chat_service_pb2_grpc.ChatServiceAsyncStub
) -> None:
    auth = bearer(service.token(tenant()))
    request = text_request("hi there", message_id=str(uuid.uuid4()))

    first = await stub.SendMessage(request, metadata=auth)
    call = stub.SendMessage(request, metadata=auth)
    again = await call

    assert again == first
    assert ("x-idempotent-replay", "true") in tuple(await call.trailing_metadata())
    listed = await stub.ListMessages(
        pb.ListMessagesRequest(conversation_id=first.conversation_id), metadata=auth
    )
    assert len(listed.messages) == 2
    conversations = await stub.ListConversations(pb.ListConversationsRequest(), metadata=auth)
    assert len(conversations.conversations) == 1


async def test_fifty_concurrent_messages_on_one_conversation(
    service: ServiceProcess, stub: chat_service_pb2_grpc.ChatServiceAsyncStub
) -> None:
    auth = bearer(service.token(tenant()))
    first = await stub.SendMessage(text_request("start"), metadata=auth)
    conversation_id = first.conversation_id

    replies = await asyncio.gather(
        *(
            stub.SendMessage(
                text_request(f"message {n}", conversation_id=conversation_id), metadata=auth
            )
            for n in range(49)
        )
    )

    listed = await stub.ListMessages(
        pb.ListMessagesRequest(conversation_id=conversation_id, page_size=1000), metadata=auth
    )
    sequences = [m.sequence for m in listed.messages]
    assert sequences == list(range(1, 101))
    assert len({m.message_id for m in listed.messages}) == 100
    given = sorted(
        s
        for r in (first, *replies)
        for s in (r.processing_metadata.sequence, *r.processing_metadata.reply_sequences)
    )
    assert given == list(range(1, 101))
    conversation = await stub.GetConversation(
        pb.GetConversationRequest(conversation_id=conversation_id), metadata=auth
    )
    assert conversation.conversation.last_sequence == 100


async def test_a_new_conversation_per_message_without_conversation_id(
    service: ServiceProcess, stub: chat_service_pb2_grpc.ChatServiceAsyncStub
) -> None:
    auth = bearer(service.token(tenant()))

    one = await stub.SendMessage(text_request("a"), metadata=auth)
    two = await stub.SendMessage(text_request("b"), metadata=auth)

    assert one.conversation_id != two.conversation_id
    assert one.message_id
    assert two.message_id
    assert one.message_id != two.message_id


async def test_unknown_conversation_is_not_found(
    service: ServiceProcess, stub: chat_service_pb2_grpc.ChatServiceAsyncStub
) -> None:
    auth = bearer(service.token(tenant()))

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.SendMessage(text_request("hi", conversation_id="nope"), metadata=auth)

    error = rich_error(caught.value)
    assert error.code is grpc.StatusCode.NOT_FOUND
    assert error.reason == "CONVERSATION_NOT_FOUND"
    assert error.domain == "chat-service"


async def test_web_replies_are_sent_once_stored(
    service: ServiceProcess, stub: chat_service_pb2_grpc.ChatServiceAsyncStub
) -> None:
    # The web widget reads its conversation from the service: storing a
    # reply is delivering it.
    auth = bearer(service.token(tenant()))
    reply = await stub.SendMessage(text_request("help"), metadata=auth)

    assert reply.replies[0].delivery_status == resources_pb2.DELIVERY_STATUS_SENT
    listed = await stub.ListMessages(
        pb.ListMessagesRequest(conversation_id=reply.conversation_id), metadata=auth
    )
    assert listed.messages[-1].delivery_status == resources_pb2.DELIVERY_STATUS_SENT


async def test_channels_without_a_connector_fail_delivery_visibly(
    service: ServiceProcess, stub: chat_service_pb2_grpc.ChatServiceAsyncStub
) -> None:
    auth = bearer(service.token(tenant()))
    reply = await stub.SendMessage(
        text_request("hi", channel=resources_pb2.CHANNEL_WHATSAPP), metadata=auth
    )

    for _ in range(100):
        listed = await stub.ListMessages(
            pb.ListMessagesRequest(conversation_id=reply.conversation_id), metadata=auth
        )
        if listed.messages[-1].delivery_status == resources_pb2.DELIVERY_STATUS_FAILED:
            break
        await asyncio.sleep(0.02)
    assert listed.messages[-1].delivery_status == resources_pb2.DELIVERY_STATUS_FAILED


async def test_a_session_keeps_its_conversation(
    service: ServiceProcess, stub: chat_service_pb2_grpc.ChatServiceAsyncStub
) -> None:
    auth = bearer(service.token(tenant()))

    first = await stub.SendMessage(text_request("hi", session_id="widget-42"), metadata=auth)
    second = await stub.SendMessage(text_request("again", session_id="widget-42"), metadata=auth)

    assert second.conversation_id == first.conversation_id
    assert second.processing_metadata.sequence == 3


async def test_a_request_protobuf_cannot_parse_is_invalid_argument(
    service: ServiceProcess, channel: grpc.aio.Channel
) -> None:
    auth = bearer(service.token(tenant()))
    send_raw = channel.unary_unary(
        "/chatbot.chat.v1.ChatService/SendMessage",
        request_serializer=lambda data: data,
        response_deserializer=pb.SendMessageResponse.FromString,
    )
    deep = text_request("too deep")
    level = deep.channel_metadata.additional_data
    for _ in range(150):  # past protobuf's nesting limit (100)
        level = level.get_or_create_struct("a")
    bodies = [
        bytes([0x3A, 100]) + b"x",  # field 7 claims 100 bytes, then ends
        b"\xff\xff\xff",
        deep.SerializeToString(),
    ]

    for body in bodies:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await send_raw(body, metadata=auth)
        error = rich_error(caught.value)
        assert error.code is grpc.StatusCode.INVALID_ARGUMENT
        assert error.fields == ["request"]


async def test_each_message_is_answered_right_after_it_and_a_callers_order_holds(
    service: ServiceProcess, stub: chat_service_pb2_grpc.ChatServiceAsyncStub
) -> None:
    # FIFO per conversation: concurrent callers arrive in no defined order,
    # but every message's reply comes right after it, without gaps, and one
    # caller's messages sent one after another keep their order.
    auth = bearer(service.token(tenant()))
    first = await stub.SendMessage(text_request("start", message_id="s-0"), metadata=auth)
    conversation_id = first.conversation_id

    async def in_turn(count: int) -> None:
        for n in range(1, count + 1):
            await stub.SendMessage(
                text_request(f"turn {n}", message_id=f"s-{n}", conversation_id=conversation_id),
                metadata=auth,
            )

    await asyncio.gather(
        in_turn(8),
        *(
            stub.SendMessage(
                text_request(f"burst {n}", message_id=f"b-{n}", conversation_id=conversation_id),
                metadata=auth,
            )
            for n in range(12)
        ),
    )

    listed = await stub.ListMessages(
        pb.ListMessagesRequest(conversation_id=conversation_id, page_size=1000), metadata=auth
    )
    messages = list(listed.messages)
    assert [m.sequence for m in messages] == list(range(1, 2 * 21 + 1))
    for user, bot in zip(messages[::2], messages[1::2], strict=True):
        assert user.role == resources_pb2.MESSAGE_ROLE_USER
        assert bot.role == resources_pb2.MESSAGE_ROLE_BOT
        assert bot.reply_to_message_id == user.message_id
    inbound = [m.message_id for m in messages[::2]]
    assert [i for i in inbound if i.startswith("s-")] == [f"s-{n}" for n in range(9)]
    assert sorted(i for i in inbound if i.startswith("b-")) == sorted(f"b-{n}" for n in range(12))


async def test_a_call_past_its_deadline_is_still_answered_once(
    fresh_service: ServiceProcess,
) -> None:
    port = free_port()
    async with running_engine(port) as engine:
        engine.delay = 0.5
        fresh_service.extra_env.update(
            {"MCP_ENGINE_URL": f"127.0.0.1:{port}", "MCP_ENGINE_TIMEOUT_MS": "5000"}
        )
        fresh_service.start()
        auth = bearer(fresh_service.token(tenant()))
        request = text_request("hello", message_id="late-1")
        async with grpc.aio.insecure_channel(fresh_service.address) as channel:
            stub = chat_service_pb2_grpc.ChatServiceStub(channel)

            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.SendMessage(request, metadata=auth, timeout=0.2)
            assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
            assert engine.called.is_set()  # the message was committed
            call = stub.SendMessage(request, metadata=auth)
            again = await call

        assert ("x-idempotent-replay", "true") in tuple(await call.trailing_metadata())
        assert again.processing_metadata.engine == "mcp"
        assert again.response.text == "mcp heard: hello (history 0)"
        assert len(engine.requests) == 1  # asked once, not again by the retry

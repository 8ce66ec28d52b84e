"""Authentication and tenant isolation over real gRPC."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from chatbot.chat.v1 import chat_service_pb2 as pb
from chatbot.chat.v1 import chat_service_pb2_grpc, resources_pb2

from chat_service.auth import SCOPE_READ, load_or_create_dev_key
from tests.support.grpc_client import Metadata, bearer, rich_error, text_request
from tests.support.service import ServiceProcess


def tenant() -> str:
    return f"tenant-{uuid.uuid4().hex[:8]}"


async def _expect(call: Awaitable[object], code: grpc.StatusCode, reason: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    error = rich_error(caught.value)
    assert (error.code, error.reason) == (code, reason)


@pytest.mark.parametrize(
    ("metadata", "reason"),
    [
        ((), "TOKEN_MISSING"),
        ((("authorization", "Bearer not-a-jwt"),), "TOKEN_INVALID"),
        ((("authorization", "Basic dXNlcjpwYXNz"),), "TOKEN_INVALID"),
    ],
)
async def test_missing_or_malformed_token(
    stub: chat_service_pb2_grpc.ChatServiceAsyncStub, metadata: Metadata, reason: str
) -> None:
    await _expect(
        stub.SendMessage(text_request(), metadata=metadata), grpc.StatusCode.UNAUTHENTICATED, reason
    )


async def test_expired_token(
    service: ServiceProcess, stub: chat_service_pb2_grpc.ChatServiceAsyncStub
) -> None:
    token = service.token(tenant(), ttl=-120)  # past the 30 s leeway

    await _expect(
        stub.ListConversations(pb.ListConversationsRequest(), metadata=bearer(token)),
        grpc.StatusCode.UNAUTHENTICATED,
        "TOKEN_EXPIRED",
    )


async def test_token_signed_with_another_key(
    stub: chat_service_pb2_grpc.ChatServiceAsyncStub, tmp_path: Path
) -> None:
    forged = load_or_create_dev_key(tmp_path).mint(tenant())

    await _expect(
        stub.SendMessage(text_request(), metadata=bearer(forged)),
        grpc.StatusCode.UNAUTHENTICATED,
        "TOKEN_INVALID",
    )


async def test_tenant_header_must_match_the_token(
    service: ServiceProcess, stub: chat_service_pb2_grpc.ChatServiceAsyncStub
) -> None:
    auth = bearer(service.token("acme"), ("x-tenant-id", "globex"))

    await _expect(
        stub.ListConversations(pb.ListConversationsRequest(), metadata=auth),
        grpc.StatusCode.PERMISSION_DENIED,
        "TENANT_MISMATCH",
    )


async def test_read_scope_cannot_write(
    service: ServiceProcess, stub: chat_service_pb2_grpc.ChatServiceAsyncStub
) -> None:
    auth = bearer(service.token(tenant(), scopes=[SCOPE_READ]))

    await stub.ListConversations(pb.ListConversationsRequest(), metadata=auth)
    await _expect(
        stub.SendMessage(text_request(), metadata=auth),
        grpc.StatusCode.PERMISSION_DENIED,
        "INSUFFICIENT_SCOPE",
    )


async def test_another_tenants_conversation_does_not_exist_for_you(
    service: ServiceProcess, stub: chat_service_pb2_grpc.ChatServiceAsyncStub
) -> None:
    owner = bearer(service.token(tenant()))
    intruder = bearer(service.token(tenant()))
    sent = await stub.SendMessage(text_request("secret"), metadata=owner)
    conversation_id = sent.conversation_id

    attempts: list[Callable[[], Awaitable[object]]] = [
        lambda: stub.GetConversation(
            pb.GetConversationRequest(conversation_id=conversation_id), metadata=intruder
        ),
        lambda: stub.ListMessages(
            pb.ListMessagesRequest(conversation_id=conversation_id), metadata=intruder
        ),
        lambda: stub.SendMessage(
            text_request("let me in", conversation_id=conversation_id), metadata=intruder
        ),
        lambda: stub.UpdateConversationStatus(
            pb.UpdateConversationStatusRequest(
                conversation_id=conversation_id,
                status=resources_pb2.CONVERSATION_STATUS_COMPLETED,
            ),
            metadata=intruder,
        ),
    ]
    for attempt in attempts:
        await _expect(attempt(), grpc.StatusCode.NOT_FOUND, "CONVERSATION_NOT_FOUND")

    listed = await stub.ListConversations(pb.ListConversationsRequest(), metadata=intruder)
    assert list(listed.conversations) == []
    # The owner's conversation is untouched by all of that.
    mine = await stub.ListMessages(
        pb.ListMessagesRequest(conversation_id=conversation_id), metadata=owner
    )
    assert mine.messages[0].content.text == "secret"
    assert len(mine.messages) == 2
    got = await stub.GetConversation(
        pb.GetConversationRequest(conversation_id=conversation_id), metadata=owner
    )
    assert got.conversation.status == resources_pb2.CONVERSATION_STATUS_ACTIVE

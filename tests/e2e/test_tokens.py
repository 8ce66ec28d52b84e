"""Page and resume tokens over real gRPC: opaque, signed, bounded.

Whatever a caller puts in `page_token` or `resume_token` (forged JSON, a
tampered signature, a token of another request, another tenant's, a
megabyte of text) is INVALID_ARGUMENT naming the field, never INTERNAL.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from chatbot.chat.v1 import chat_service_pb2 as pb
from chatbot.chat.v1 import chat_service_pb2_grpc, resources_pb2

from tests.support.grpc_client import Metadata, bearer, rich_error, text_request
from tests.support.service import ServiceProcess

if TYPE_CHECKING:
    Stub = chat_service_pb2_grpc.ChatServiceAsyncStub


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


# base64 of [[[[...]]]] (and of an object nested as deep): json.loads of it
# raised RecursionError, answered INTERNAL.
NESTED_LIST = _b64("[" * 100_000 + "]" * 100_000)
NESTED_OBJECT = _b64('{"p":' * 50_000 + "1" + "}" * 50_000)
# A token of the first version: unsigned JSON, no longer accepted.
UNSIGNED = _b64('{"v":1,"q":"0000000000000000","p":{"s":1}}')
OVERSIZED = "A" * 200_000


@dataclass
class Tenant:
    auth: Metadata
    conversation_id: str


@pytest.fixture
async def tenant(service: ServiceProcess, stub: Stub) -> Tenant:
    """A tenant with two conversations, the first with two turns (four messages)."""
    auth = bearer(service.token(f"tenant-{uuid.uuid4().hex[:8]}"))
    first = await stub.SendMessage(text_request("one"), metadata=auth)
    await stub.SendMessage(
        text_request("two", conversation_id=first.conversation_id), metadata=auth
    )
    await stub.SendMessage(text_request("other", user_id="user-2"), metadata=auth)
    return Tenant(auth, first.conversation_id)


async def _finish(call: Any) -> None:
    if hasattr(call, "__aiter__"):
        async for _ in call:
            pass
    else:
        await call


async def _invalid(call: object, field: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _finish(call)
    error = rich_error(caught.value)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT, error
    assert error.fields == [field]
    assert len(error.message) < 500  # the token is never echoed back


async def _conversations_token(stub: Stub, tenant: Tenant) -> str:
    page = await stub.ListConversations(
        pb.ListConversationsRequest(page_size=1), metadata=tenant.auth
    )
    assert page.next_page_token
    return page.next_page_token


async def _messages_token(stub: Stub, tenant: Tenant) -> str:
    page = await stub.ListMessages(
        pb.ListMessagesRequest(conversation_id=tenant.conversation_id, page_size=1),
        metadata=tenant.auth,
    )
    assert page.next_page_token
    return page.next_page_token


def _tampered(token: str) -> str:
    middle = len(token) // 2
    flipped = "B" if token[middle] != "B" else "C"
    return token[:middle] + flipped + token[middle + 1 :]


BAD_TOKENS = [NESTED_LIST, NESTED_OBJECT, UNSIGNED, OVERSIZED, "not a token", "\u00e9" * 10]


@pytest.mark.parametrize("token", BAD_TOKENS, ids=lambda t: t[:12])
async def test_a_bad_page_token_is_invalid_argument(stub: Stub, tenant: Tenant, token: str) -> None:
    await _invalid(
        stub.ListConversations(pb.ListConversationsRequest(page_token=token), metadata=tenant.auth),
        "page_token",
    )
    await _invalid(
        stub.ListMessages(
            pb.ListMessagesRequest(conversation_id=tenant.conversation_id, page_token=token),
            metadata=tenant.auth,
        ),
        "page_token",
    )


@pytest.mark.parametrize("token", BAD_TOKENS, ids=lambda t: t[:12])
async def test_a_bad_resume_token_is_invalid_argument(
    stub: Stub, tenant: Tenant, token: str
) -> None:
    await _invalid(
        stub.WatchConversations(
            pb.WatchConversationsRequest(resume_token=token), metadata=tenant.auth
        ),
        "resume_token",
    )


async def test_issued_page_tokens_page_through(stub: Stub, tenant: Tenant) -> None:
    token = await _conversations_token(stub, tenant)
    rest = await stub.ListConversations(
        pb.ListConversationsRequest(page_size=1, page_token=token), metadata=tenant.auth
    )
    assert len(rest.conversations) == 1
    assert rest.next_page_token == ""

    token = await _messages_token(stub, tenant)
    rest_messages = await stub.ListMessages(
        pb.ListMessagesRequest(
            conversation_id=tenant.conversation_id, page_size=10, page_token=token
        ),
        metadata=tenant.auth,
    )
    assert [m.sequence for m in rest_messages.messages] == [2, 3, 4]


async def test_a_tampered_page_token_is_invalid_argument(stub: Stub, tenant: Tenant) -> None:
    conversations = await _conversations_token(stub, tenant)
    messages = await _messages_token(stub, tenant)

    await _invalid(
        stub.ListConversations(
            pb.ListConversationsRequest(page_size=1, page_token=_tampered(conversations)),
            metadata=tenant.auth,
        ),
        "page_token",
    )
    await _invalid(
        stub.ListMessages(
            pb.ListMessagesRequest(
                conversation_id=tenant.conversation_id, page_size=1, page_token=_tampered(messages)
            ),
            metadata=tenant.auth,
        ),
        "page_token",
    )


async def test_a_token_of_other_parameters_is_invalid_argument(stub: Stub, tenant: Tenant) -> None:
    conversations = await _conversations_token(stub, tenant)
    messages = await _messages_token(stub, tenant)

    await _invalid(
        stub.ListConversations(
            pb.ListConversationsRequest(
                page_size=1, page_token=conversations, channel=resources_pb2.CHANNEL_WEB
            ),
            metadata=tenant.auth,
        ),
        "page_token",
    )
    await _invalid(
        stub.ListMessages(
            pb.ListMessagesRequest(
                conversation_id=tenant.conversation_id,
                page_token=messages,
                order=pb.SORT_ORDER_DESCENDING,
            ),
            metadata=tenant.auth,
        ),
        "page_token",
    )
    # A page token is not a resume token, nor one list's token another's.
    await _invalid(
        stub.WatchConversations(
            pb.WatchConversationsRequest(resume_token=messages), metadata=tenant.auth
        ),
        "resume_token",
    )
    await _invalid(
        stub.ListConversations(
            pb.ListConversationsRequest(page_size=1, page_token=messages), metadata=tenant.auth
        ),
        "page_token",
    )


async def test_another_tenants_token_is_invalid_argument(
    service: ServiceProcess, stub: Stub, tenant: Tenant
) -> None:
    token = await _conversations_token(stub, tenant)
    stranger = bearer(service.token(f"tenant-{uuid.uuid4().hex[:8]}"))

    await _invalid(
        stub.ListConversations(
            pb.ListConversationsRequest(page_size=1, page_token=token), metadata=stranger
        ),
        "page_token",
    )


async def _next(call: Any) -> pb.WatchConversationsResponse:
    response = await asyncio.wait_for(call.read(), 10)
    assert isinstance(response, pb.WatchConversationsResponse)
    return response


async def test_a_resume_token_resumes_and_a_tampered_one_is_refused(
    stub: Stub, tenant: Tenant
) -> None:
    watch = stub.WatchConversations(
        pb.WatchConversationsRequest(resume_token=""), metadata=tenant.auth
    )
    await watch.initial_metadata()
    sent = await stub.SendMessage(
        text_request("watched", conversation_id=tenant.conversation_id), metadata=tenant.auth
    )
    # A watch "from now on" starts at the log's end when it opened: none of
    # the tenant fixture's earlier events comes first.
    first = await _next(watch)
    watch.cancel()
    assert first.event.message_id == sent.message_id
    assert first.event.event_type == "message.received"
    assert first.event.conversation_id == sent.conversation_id

    resumed = stub.WatchConversations(
        pb.WatchConversationsRequest(resume_token=first.resume_token), metadata=tenant.auth
    )
    after = await _next(resumed)  # the event after the first, from the log
    resumed.cancel()
    assert after.event.event_type == "message.sent"
    assert after.event.message_id in {reply.message_id for reply in sent.replies}

    await _invalid(
        stub.WatchConversations(
            pb.WatchConversationsRequest(resume_token=_tampered(first.resume_token)),
            metadata=tenant.auth,
        ),
        "resume_token",
    )

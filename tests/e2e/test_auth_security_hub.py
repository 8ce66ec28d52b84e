"""SECURITY_HUB_URL through the real service: every call's token validated
and its permission checked by a real gRPC Security Hub (a stub the test
steers), answers cached, failures closed."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterable, AsyncIterator, Awaitable
from dataclasses import dataclass

import grpc
import pytest
import pytest_asyncio
from chatbot.chat.v1 import chat_service_pb2 as pb
from chatbot.chat.v1 import chat_service_pb2_grpc

from chat_service.auth import SCOPE_READ, SCOPE_WRITE
from tests.support.grpc_client import bearer, rich_error, text_request
from tests.support.net import free_port
from tests.support.security_hub_server import HubBehaviour, running_security_hub
from tests.support.service import ServiceProcess

# The hub runs in the test process, on the event loop the module's tests
# share; authentication is decided before the store is touched.
pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.store_independent]

CHAT = "/chatbot.chat.v1.ChatService"
# Generous, so that a loaded machine does not turn answers into missed
# deadlines; the slow hub's test waits this long once.
HUB_TIMEOUT_MS = 1500


@dataclass
class Setup:
    hub: HubBehaviour
    stub: chat_service_pb2_grpc.ChatServiceAsyncStub
    tenant: str


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def hub_service(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[HubBehaviour, ServiceProcess]]:
    port = free_port()
    async with running_security_hub(port) as hub:
        process = ServiceProcess(
            tmp_path_factory.mktemp("hub"),
            {
                "SECURITY_HUB_URL": f"127.0.0.1:{port}",
                "SECURITY_HUB_TIMEOUT_MS": str(HUB_TIMEOUT_MS),
            },
        )
        process.start()
        try:
            yield hub, process
        finally:
            process.stop()


@pytest_asyncio.fixture(loop_scope="module")
async def setup(hub_service: tuple[HubBehaviour, ServiceProcess]) -> AsyncIterator[Setup]:
    hub, process = hub_service
    hub.reset()
    async with grpc.aio.insecure_channel(process.address) as channel:
        yield Setup(
            hub, chat_service_pb2_grpc.ChatServiceStub(channel), f"t-{uuid.uuid4().hex[:8]}"
        )


async def _refused(call: Awaitable[object]) -> tuple[grpc.StatusCode, str, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    error = rich_error(caught.value)
    return error.code, error.reason, error.message


async def test_an_allowed_call_goes_through(setup: Setup) -> None:
    token = setup.hub.issue(setup.tenant, subject="alice", scopes=[SCOPE_READ, SCOPE_WRITE])

    sent = await setup.stub.SendMessage(text_request("hi"), metadata=bearer(token))

    assert sent.conversation_id
    assert setup.hub.validations == [token]
    [check] = setup.hub.checks
    assert (check.subject, check.tenant_id, check.permission, check.resource) == (
        "alice",
        setup.tenant,
        SCOPE_WRITE,
        f"{CHAT}/SendMessage",
    )
    # The conversation is the hub's tenant's.
    listed = await setup.stub.ListConversations(
        pb.ListConversationsRequest(), metadata=bearer(token)
    )
    assert [c.conversation_id for c in listed.conversations] == [sent.conversation_id]


async def test_a_denied_call_is_permission_denied(setup: Setup) -> None:
    token = setup.hub.issue(setup.tenant, scopes=[SCOPE_READ, SCOPE_WRITE], grant=[SCOPE_READ])

    code, reason, message = await _refused(
        setup.stub.SendMessage(text_request(), metadata=bearer(token))
    )
    assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "SECURITY_HUB_DENIED")
    assert "chat:write is not granted" in message
    # The scopes the token carries decide nothing: the hub's grants do.
    await setup.stub.ListConversations(pb.ListConversationsRequest(), metadata=bearer(token))
    # Streams are checked the same way.
    request = pb.ExportConversationRequest(
        conversation_id="c-1", format=pb.EXPORT_FORMAT_JSON_LINES
    )
    denied = setup.hub.issue(setup.tenant, subject="nobody", scopes=[SCOPE_READ], grant=[])
    code, reason, _ = await _refused(
        _drain(setup.stub.ExportConversation(request, metadata=bearer(denied)))
    )
    assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "SECURITY_HUB_DENIED")


async def test_an_invalid_token_is_unauthenticated(setup: Setup) -> None:
    code, reason, message = await _refused(
        setup.stub.SendMessage(text_request(), metadata=bearer("forged-token"))
    )
    assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID")
    assert "forged-token" not in message
    assert setup.hub.checks == []


async def test_a_failing_hub_fails_closed(setup: Setup) -> None:
    token = setup.hub.issue(setup.tenant)
    setup.hub.fail_with = grpc.StatusCode.UNAVAILABLE

    code, reason, _ = await _refused(setup.stub.SendMessage(text_request(), metadata=bearer(token)))

    assert (code, reason) == (grpc.StatusCode.UNAVAILABLE, "SECURITY_HUB_UNAVAILABLE")


async def test_a_hub_slower_than_the_deadline_fails_closed(setup: Setup) -> None:
    token = setup.hub.issue(setup.tenant)
    setup.hub.delay = 60  # far past the deadline; cut short when the hub stops

    code, reason, _ = await _refused(
        setup.stub.ListConversations(pb.ListConversationsRequest(), metadata=bearer(token))
    )

    assert (code, reason) == (grpc.StatusCode.UNAVAILABLE, "SECURITY_HUB_UNAVAILABLE")
    assert setup.hub.validations == [token]


async def test_answers_are_cached(setup: Setup) -> None:
    token = setup.hub.issue(setup.tenant, scopes=[SCOPE_READ, SCOPE_WRITE])
    for _ in range(5):
        await setup.stub.ListConversations(pb.ListConversationsRequest(), metadata=bearer(token))
    await setup.stub.SendMessage(text_request(), metadata=bearer(token))

    assert setup.hub.validations == [token]
    assert [(c.permission, c.resource) for c in setup.hub.checks] == [
        (SCOPE_READ, f"{CHAT}/ListConversations"),
        (SCOPE_WRITE, f"{CHAT}/SendMessage"),
    ]


async def test_a_hub_that_is_down_fails_closed(tmp_path_factory: pytest.TempPathFactory) -> None:
    # Nothing listens at the hub's address.
    process = ServiceProcess(
        tmp_path_factory.mktemp("hub-down"),
        {"SECURITY_HUB_URL": f"127.0.0.1:{free_port()}", "SECURITY_HUB_TIMEOUT_MS": "500"},
    ).start()
    try:
        async with grpc.aio.insecure_channel(process.address) as channel:
            stub = chat_service_pb2_grpc.ChatServiceStub(channel)
            code, reason, _ = await _refused(
                stub.SendMessage(text_request(), metadata=bearer("any-token"))
            )
        assert (code, reason) == (grpc.StatusCode.UNAVAILABLE, "SECURITY_HUB_UNAVAILABLE")
    finally:
        process.stop()


async def _drain(responses: AsyncIterable[object]) -> None:
    async for _ in responses:
        pass

"""The MCP Engine over real gRPC: replies, deadlines, outages."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
import pytest_asyncio
from chatbot.chat.v1 import chat_service_pb2 as pb
from chatbot.chat.v1 import chat_service_pb2_grpc, resources_pb2

from tests.support.engine_server import EngineBehaviour, running_engine
from tests.support.grpc_client import Metadata, bearer, text_request
from tests.support.net import free_port
from tests.support.service import ServiceProcess, ServiceStore

# The engine runs in the test process, on the event loop the module's tests share.
pytestmark = pytest.mark.asyncio(loop_scope="module")

FALLBACK = "Sorry, I can't answer right now. Please try again in a moment."


@dataclass
class Setup:
    engine: EngineBehaviour
    stub: chat_service_pb2_grpc.ChatServiceAsyncStub
    auth: Metadata
    tenant: str


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine_service(
    service_store: ServiceStore, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[EngineBehaviour, ServiceProcess]]:
    """One engine and one service asking it, for the whole module: each test
    resets the engine and has a tenant of its own."""
    port = free_port()
    async with running_engine(port) as engine:
        process = ServiceProcess(
            tmp_path_factory.mktemp("engine"),
            {"MCP_ENGINE_URL": f"127.0.0.1:{port}", "MCP_ENGINE_TIMEOUT_MS": "300"},
            store=service_store,
        )
        process.start()
        try:
            yield engine, process
        finally:
            process.kill()


@pytest_asyncio.fixture(loop_scope="module")
async def setup(
    engine_service: tuple[EngineBehaviour, ServiceProcess],
) -> AsyncIterator[Setup]:
    engine, process = engine_service
    engine.reset()
    tenant = f"tenant-{uuid.uuid4().hex[:8]}"
    async with grpc.aio.insecure_channel(process.address) as channel:
        yield Setup(
            engine,
            chat_service_pb2_grpc.ChatServiceStub(channel),
            bearer(process.token(tenant)),
            tenant,
        )


async def test_the_engine_answers_with_context_and_history(setup: Setup) -> None:
    first = await setup.stub.SendMessage(text_request("one", user_id="u-9"), metadata=setup.auth)
    second = await setup.stub.SendMessage(
        text_request("two", user_id="u-9", conversation_id=first.conversation_id),
        metadata=setup.auth,
    )

    assert first.processing_metadata.engine == "mcp"
    assert first.response.text == "mcp heard: one (history 0)"
    assert second.response.text == "mcp heard: two (history 2)"
    assert second.conversation_state.current_intent == "mcp_echo"
    assert second.conversation_state.conversation_stage == "turn-3"
    assert dict(second.processing_metadata.confidence_scores) == {"mcp_echo": 0.8}
    request = setup.engine.requests[-1]
    assert (request.tenant_id, request.user_id, request.sequence) == (setup.tenant, "u-9", 3)
    assert request.context.conversation_stage == "turn-1"  # the state the first reply left
    assert request.recent_messages[0].content.text == "one"


async def test_engine_timeout_gives_the_fallback_and_a_consistent_conversation(
    setup: Setup,
) -> None:
    first = await setup.stub.SendMessage(text_request("one"), metadata=setup.auth)
    setup.engine.delay = 2.0  # far past MCP_ENGINE_TIMEOUT_MS=300

    slow = await setup.stub.SendMessage(
        text_request("two", conversation_id=first.conversation_id), metadata=setup.auth
    )

    assert slow.processing_metadata.fallback_used
    assert slow.processing_metadata.fallback_reason == "timeout"
    assert slow.processing_metadata.engine == "fallback"
    assert slow.response.text == FALLBACK
    assert slow.conversation_state == first.conversation_state  # the engine's state is kept

    setup.engine.delay = 0
    third = await setup.stub.SendMessage(
        text_request("three", conversation_id=first.conversation_id), metadata=setup.auth
    )
    assert not third.processing_metadata.fallback_used
    listed = await setup.stub.ListMessages(
        pb.ListMessagesRequest(conversation_id=first.conversation_id), metadata=setup.auth
    )
    assert [m.sequence for m in listed.messages] == [1, 2, 3, 4, 5, 6]
    assert [m.content.text for m in listed.messages][3] == FALLBACK


async def test_engine_errors_give_the_fallback(setup: Setup) -> None:
    setup.engine.fail_with = grpc.StatusCode.INTERNAL

    reply = await setup.stub.SendMessage(text_request("hi"), metadata=setup.auth)

    assert reply.processing_metadata.fallback_reason == "error"
    assert reply.response.text == FALLBACK


async def test_engine_down_gives_the_fallback(fresh_service: ServiceProcess) -> None:
    fresh_service.extra_env["MCP_ENGINE_URL"] = f"127.0.0.1:{free_port()}"  # nobody listens
    fresh_service.start()
    async with grpc.aio.insecure_channel(fresh_service.address) as channel:
        stub = chat_service_pb2_grpc.ChatServiceStub(channel)
        reply = await stub.SendMessage(
            text_request("anyone?"), metadata=bearer(fresh_service.token("acme"))
        )

    assert reply.processing_metadata.fallback_reason in {"unavailable", "timeout"}
    assert reply.response.text == FALLBACK


async def test_the_engine_can_hand_over_to_a_human(setup: Setup) -> None:
    setup.engine.escalate = True

    reply = await setup.stub.SendMessage(text_request("agent"), metadata=setup.auth)
    got = await setup.stub.GetConversation(
        pb.GetConversationRequest(conversation_id=reply.conversation_id), metadata=setup.auth
    )

    assert got.conversation.status == resources_pb2.CONVERSATION_STATUS_ESCALATED
    after = await setup.stub.SendMessage(
        text_request("hello?", conversation_id=reply.conversation_id), metadata=setup.auth
    )
    assert after.processing_metadata.engine == "none"
    assert len(setup.engine.requests) == 1

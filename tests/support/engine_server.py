"""A real MCP Engine gRPC server for tests, whose behaviour the test steers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
from chatbot.chat.v1 import content_pb2, resources_pb2
from chatbot.mcp.v1 import engine_service_pb2 as pb
from chatbot.mcp.v1 import engine_service_pb2_grpc

from tests.support.grpc_stub_server import serving


@dataclass
class EngineBehaviour:
    delay: float = 0.0
    fail_with: grpc.StatusCode | None = None
    intent: str = "mcp_echo"
    escalate: bool = False
    requests: list[pb.ProcessMessageRequest] = field(default_factory=list)
    # Each call's invocation metadata (lower-case keys), in the order of `requests`.
    metadata: list[dict[str, str]] = field(default_factory=list)
    called: asyncio.Event = field(default_factory=asyncio.Event)

    def reset(self) -> None:
        """Back to a plain, healthy engine that has heard nothing: for the
        next test of a module that shares one engine."""
        fresh = EngineBehaviour()
        self.delay, self.fail_with = fresh.delay, fresh.fail_with
        self.intent, self.escalate = fresh.intent, fresh.escalate
        self.requests.clear()
        self.metadata.clear()
        self.called = fresh.called


class _Engine(engine_service_pb2_grpc.EngineServiceServicer):
    def __init__(self, behaviour: EngineBehaviour) -> None:
        self.behaviour = behaviour

    async def ProcessMessage(
        self, request: pb.ProcessMessageRequest, context: Any
    ) -> pb.ProcessMessageResponse:
        behaviour = self.behaviour
        behaviour.requests.append(request)
        behaviour.metadata.append(
            {
                key: value
                for key, value in context.invocation_metadata() or ()
                if isinstance(value, str)
            }
        )
        behaviour.called.set()
        if behaviour.delay:
            await asyncio.sleep(behaviour.delay)
        if behaviour.fail_with is not None:
            await context.abort(behaviour.fail_with, "engine told to fail")
        turns = len(request.recent_messages)
        return pb.ProcessMessageResponse(
            response_contents=[
                content_pb2.MessageContent(
                    type=content_pb2.MESSAGE_TYPE_TEXT,
                    text=f"mcp heard: {request.content.text} (history {turns})",
                )
            ],
            updated_context=resources_pb2.ConversationState(
                current_intent=behaviour.intent, conversation_stage=f"turn-{request.sequence}"
            ),
            confidence_scores={behaviour.intent: 0.8},
            escalate=behaviour.escalate,
        )


@asynccontextmanager
async def running_engine(
    port: int, *, credentials: grpc.ServerCredentials | None = None
) -> AsyncIterator[EngineBehaviour]:
    """An engine on 127.0.0.1:port; TLS with `credentials`."""
    behaviour = EngineBehaviour()
    async with serving(
        lambda server: engine_service_pb2_grpc.add_EngineServiceServicer_to_server(
            _Engine(behaviour), server
        ),
        port,
        credentials,
    ):
        yield behaviour

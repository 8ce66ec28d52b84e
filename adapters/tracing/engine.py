"""The Engine port, traced: each call to the bot engine is a span, the MCP
engine's a CLIENT span named as OpenTelemetry's RPC conventions name a gRPC
call (the engine's server span becomes its child: GrpcEngine sends the
trace context in the call's metadata). Wrapped in the composition root."""

from __future__ import annotations

import asyncio

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from chat_service.ports import Engine, EngineFailure, EngineReply, EngineRequest

MCP_SERVICE = "chatbot.mcp.v1.EngineService"
MCP_METHOD = "ProcessMessage"


class TracedEngine:
    """An Engine: `engine`'s answers, each call in a span of `tracer`."""

    def __init__(self, engine: Engine, tracer: trace.Tracer) -> None:
        self._engine = engine
        self._tracer = tracer
        remote = engine.name == "mcp"
        self._span_name = f"{MCP_SERVICE}/{MCP_METHOD}" if remote else f"engine {engine.name}"
        self._kind = SpanKind.CLIENT if remote else SpanKind.INTERNAL
        self._attributes: dict[str, str] = {"chat.engine": engine.name}
        if remote:
            self._attributes |= {
                "rpc.system": "grpc",
                "rpc.service": MCP_SERVICE,
                "rpc.method": MCP_METHOD,
            }

    @property
    def name(self) -> str:
        return self._engine.name

    @property
    def history_size(self) -> int:
        return self._engine.history_size

    async def process(self, request: EngineRequest) -> EngineReply:
        with self._tracer.start_as_current_span(
            self._span_name,
            kind=self._kind,
            attributes={
                **self._attributes,
                "chat.tenant_id": request.tenant_id,
                "chat.conversation_id": request.conversation_id,
                "chat.message_id": request.message_id,
            },
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                return await self._engine.process(request)
            except EngineFailure as failure:
                # The reason only: the detail may quote the engine's error text.
                span.set_attribute("chat.engine.failure", failure.reason)
                span.set_status(Status(StatusCode.ERROR, failure.reason))
                raise
            except asyncio.CancelledError:
                # The caller's engine timeout (bot_answer.py) cancels the call.
                span.set_attribute("chat.engine.failure", "timeout")
                span.set_status(Status(StatusCode.ERROR, "timeout"))
                raise
            except Exception as error:
                span.set_status(Status(StatusCode.ERROR, type(error).__name__))
                raise

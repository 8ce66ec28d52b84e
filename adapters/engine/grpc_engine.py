"""The MCP Engine over gRPC (chatbot.mcp.v1.EngineService), at MCP_ENGINE_URL.

One long-lived channel per process (HTTP/2 multiplexes the calls). Every
call carries a deadline, so the engine can stop work nobody waits for. Any
failure becomes EngineFailure with a reason the pipeline reports:
"timeout" (DEADLINE_EXCEEDED), "unavailable" (UNAVAILABLE: the engine is
down or unreachable) or "error" (anything else).

With MCP_ENGINE_TLS the channel is TLS, verified against MCP_ENGINE_CA_FILE
(else the system's trusted roots); the engine's certificate must name the
host of MCP_ENGINE_URL.
"""

from __future__ import annotations

import grpc
from chatbot.mcp.v1 import engine_service_pb2 as pb
from chatbot.mcp.v1 import engine_service_pb2_grpc

from adapters.engine.mapping import reply_from_proto, request_to_proto
from adapters.grpc_channels import client_channel
from adapters.tracing.propagation import trace_headers
from chat_service.ports import EngineFailure, EngineReply, EngineRequest

CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # Our own retries are the fallback reply; don't let grpc retry behind us.
    ("grpc.enable_retries", 0),
]


class GrpcEngine:
    name = "mcp"
    history_size = 20  # ProcessMessageRequest.recent_messages: "at most 20"

    def __init__(
        self,
        target: str,
        *,
        timeout: float,
        tls: bool = False,
        root_certificates: bytes | None = None,
    ) -> None:
        self._channel = client_channel(
            target,
            options=CHANNEL_OPTIONS,
            tls=tls,
            root_certificates=root_certificates,
            whose="the engine's",
        )
        self._stub = engine_service_pb2_grpc.EngineServiceStub(self._channel)
        self._timeout = timeout

    async def process(self, request: EngineRequest) -> EngineReply:
        try:
            response: pb.ProcessMessageResponse = await self._stub.ProcessMessage(
                request_to_proto(request),
                timeout=self._timeout,
                # The trace context, when the call is traced: the engine's
                # spans join the caller's trace.
                metadata=tuple(trace_headers().items()) or None,
            )
        except grpc.aio.AioRpcError as error:
            code = error.code()
            reason = {
                grpc.StatusCode.DEADLINE_EXCEEDED: "timeout",
                grpc.StatusCode.UNAVAILABLE: "unavailable",
            }.get(code, "error")
            raise EngineFailure(reason, f"{code.name}: {error.details()}") from error
        return reply_from_proto(response)

    async def close(self) -> None:
        await self._channel.close(grace=None)

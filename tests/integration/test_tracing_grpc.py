"""The RPCs' server spans, on a real grpc.aio server (production's
build_server around the core, wired with tracing on) over a real channel,
read back from the SDK's in-memory exporter: the caller's W3C trace context
continued, the status recorded, the call's steps under its span."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import jwt
import pytest
from chatbot.chat.v1 import chat_service_pb2, chat_service_pb2_grpc, content_pb2, resources_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.trace import SpanKind, StatusCode

from chat_service.domain.enums import Channel
from chat_service.grpc_api.server import build_server
from chat_service.ports import ConversationChange, StoreUnavailable
from chat_service.wiring import Services
from tests import builders
from tests.builders import TENANT
from tests.fakes import InMemoryStore, RecordingSender
from tests.support.tracing import Traces, parent_id, span_id, trace_id

CALLER_TRACE = 0x4BF92F3577B34DA6A3CE929D0E0E4736
CALLER_SPAN = 0x00F067AA0BA902B7
TRACEPARENT = f"00-{CALLER_TRACE:032x}-{CALLER_SPAN:016x}-01"
SEND = "chatbot.chat.v1.ChatService/SendMessage"
EXPORT = "chatbot.chat.v1.ChatService/ExportConversation"


class FailingStore(InMemoryStore):
    """A store whose writes fail as a lost database does, when told to."""

    down = False

    async def write(self, change: ConversationChange) -> None:
        if self.down:
            raise StoreUnavailable("the database is away")
        await super().write(change)


@dataclass
class Served:
    stub: chat_service_pb2_grpc.ChatServiceAsyncStub
    traces: Traces
    store: FailingStore
    services: Services
    health: health_pb2_grpc.HealthStub


def token() -> str:
    claims = {
        "sub": "caller",
        "tenant_id": TENANT,
        "scope": "chat:read chat:write",
        "exp": int(time.time()) + 600,
    }
    return jwt.encode(claims, builders._JWT_SECRET, algorithm="HS256")


def metadata(*extra: tuple[str, str]) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token()}"), *extra)


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    traces = Traces.start()
    store = FailingStore()
    services = builders.build_core(
        store=store,
        senders={Channel.SMS: RecordingSender()},
        tracer=traces.tracer,
        rpc_tracer=traces.tracer.otel,
    )
    server, health_servicer = build_server(services)
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Served(
            chat_service_pb2_grpc.ChatServiceStub(channel),
            traces,
            store,
            services,
            health_pb2_grpc.HealthStub(channel),
        )
    finally:
        await channel.close(None)
        await server.stop(None)
        await services.delivery.close(1.0)
        traces.provider.shutdown()


def send_request(user_id: str = "user-1") -> chat_service_pb2.SendMessageRequest:
    return chat_service_pb2.SendMessageRequest(
        user_id=user_id,
        channel=resources_pb2.CHANNEL_WEB,
        content=content_pb2.MessageContent(type=content_pb2.MESSAGE_TYPE_TEXT, text="hello"),
    )


async def test_a_call_continues_the_caller_s_trace(served: Served) -> None:
    await served.stub.SendMessage(
        send_request(), metadata=metadata(("traceparent", TRACEPARENT), ("tracestate", "k=v"))
    )

    span = served.traces.one(SEND)
    assert span.kind is SpanKind.SERVER
    assert trace_id(span) == CALLER_TRACE
    assert parent_id(span) == CALLER_SPAN
    assert span.parent is not None
    assert span.parent.is_remote
    assert span.context is not None
    assert span.context.trace_state.get("k") == "v"
    assert dict(span.attributes or {}) == {
        "rpc.system": "grpc",
        "rpc.service": "chatbot.chat.v1.ChatService",
        "rpc.method": "SendMessage",
        "rpc.grpc.status_code": 0,
    }
    assert span.status.status_code is StatusCode.UNSET
    # The call's steps are its children.
    writes = served.traces.named("chat.store.write")
    assert writes
    assert {parent_id(write) for write in writes} == {span_id(span)}


async def test_without_a_caller_trace_the_call_starts_one(served: Served) -> None:
    await served.stub.SendMessage(send_request(), metadata=metadata())
    span = served.traces.one(SEND)
    assert span.parent is None
    assert trace_id(span) != 0


@pytest.mark.parametrize(
    "garbage",
    [
        "not-a-traceparent",
        f"00-{0:032x}-{CALLER_SPAN:016x}-01",
        "00-" + "z" * 32 + "-" + "1" * 16 + "-01",
    ],
)
async def test_a_malformed_traceparent_is_ignored(served: Served, garbage: str) -> None:
    response = await served.stub.SendMessage(
        send_request(), metadata=metadata(("traceparent", garbage))
    )
    assert response.message_id
    span = served.traces.one(SEND)
    assert span.parent is None
    assert trace_id(span) != 0


async def test_a_caller_s_mistake_is_recorded_but_is_no_server_error(served: Served) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await served.stub.SendMessage(send_request(user_id=""), metadata=metadata())
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as unauthenticated:
        await served.stub.SendMessage(send_request())
    assert unauthenticated.value.code() is grpc.StatusCode.UNAUTHENTICATED

    invalid, no_token = sorted(served.traces.named(SEND), key=lambda s: s.start_time or 0)
    assert invalid.attributes is not None
    assert invalid.attributes["rpc.grpc.status_code"] == 3
    assert no_token.attributes is not None
    assert no_token.attributes["rpc.grpc.status_code"] == 16
    assert invalid.status.status_code is StatusCode.UNSET
    assert no_token.status.status_code is StatusCode.UNSET


async def test_a_server_side_failure_marks_the_span_an_error(served: Served) -> None:
    served.store.down = True
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await served.stub.SendMessage(send_request(), metadata=metadata())
    assert failed.value.code() is grpc.StatusCode.UNAVAILABLE

    span = served.traces.one(SEND)
    assert span.attributes is not None
    assert span.attributes["rpc.grpc.status_code"] == 14
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "UNAVAILABLE"
    write = served.traces.one("chat.store.write")
    assert write.status.status_code is StatusCode.ERROR
    assert write.status.description == "StoreUnavailable"  # the type, not the text


async def test_a_streamed_answer_is_one_span_to_its_status(served: Served) -> None:
    sent = await served.stub.SendMessage(send_request(), metadata=metadata())
    chunks = [
        chunk
        async for chunk in served.stub.ExportConversation(
            chat_service_pb2.ExportConversationRequest(
                conversation_id=sent.conversation_id,
                format=chat_service_pb2.EXPORT_FORMAT_JSON_LINES,
            ),
            metadata=metadata(("traceparent", TRACEPARENT)),
        )
    ]
    assert chunks

    span = served.traces.one(EXPORT)
    assert parent_id(span) == CALLER_SPAN
    assert span.attributes is not None
    assert span.attributes["rpc.grpc.status_code"] == 0


async def test_health_checks_are_not_traced(served: Served) -> None:
    # Probes come every few seconds from Kubernetes and Envoy.
    answer = await served.health.Check(health_pb2.HealthCheckRequest())
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
    await served.stub.SendMessage(send_request(), metadata=metadata())
    assert [span.name for span in served.traces.spans() if span.name.startswith("grpc.")] == []
    assert served.traces.named(SEND)  # while the service's own calls are


async def test_a_response_stream_cancelled_while_written_ends_its_span_cleanly(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    # A client that stops reading a large export: grpc.aio is blocked writing
    # when the cancel comes and closes the handler later, from another task.
    conversation = builders.make_conversation(user_id="caller")
    messages = [
        builders.make_message(conversation, sequence, text="y" * 3000, user_id="caller")
        for sequence in range(1, 3001)
    ]
    await served.store.write(builders.create_change(conversation, messages))
    call = served.stub.ExportConversation(
        chat_service_pb2.ExportConversationRequest(
            conversation_id=conversation.conversation_id,
            format=chat_service_pb2.EXPORT_FORMAT_JSON_LINES,
        ),
        metadata=metadata(),
    )
    assert await call.read()
    await asyncio.sleep(0.5)  # the server fills the flow-control window and waits
    call.cancel()
    for _ in range(200):
        if served.traces.named(EXPORT):
            break
        await asyncio.sleep(0.02)

    [span] = served.traces.named(EXPORT)
    assert span.attributes is not None
    assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.CANCELLED.value[0]
    # (grpc itself logs the cancelled write; OpenTelemetry must not fail
    # to detach the span's context, the handler's task being gone.)
    assert [r.getMessage() for r in caplog.records if r.name.startswith("opentelemetry")] == []

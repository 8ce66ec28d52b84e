"""Tracing end to end: the real service exporting over OTLP/gRPC to a real
trace receiver in the test process (tests/support/otlp_collector.py), with
the MCP engine stub and the Slack Web API emulator recording the trace
context they are sent.

One SendMessage on a Slack conversation, with the caller's `traceparent`,
is followed through: the SERVER span (a child of the caller's span), the
engine's CLIENT span (whose context the engine got), the delivery from the
background queue (`chat.deliver`, same trace) and the HTTP CLIENT span of
each attempt (whose context Slack got), and the JSON log lines of the call
carrying the trace id. Without an endpoint (the default) nothing carries a
trace context; a caller's garbage `traceparent` starts a trace of its own.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import pytest_asyncio
from chatbot.chat.v1 import chat_service_pb2 as pb
from chatbot.chat.v1 import chat_service_pb2_grpc, resources_pb2
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from tests.e2e.requests import TenantClient, client_for
from tests.e2e.test_slack import Workspace, slack_id
from tests.support.channel_e2e import answered, channel_secrets_key, eventually, service_stub
from tests.support.emulators import RecordedCall, running
from tests.support.emulators.slack_api import SlackApiEmulator
from tests.support.engine_server import EngineBehaviour, running_engine
from tests.support.grpc_client import text_request
from tests.support.net import free_port
from tests.support.otlp_collector import ReceivedSpan, TraceCollector, running_collector
from tests.support.service import ServiceProcess

# The receiver, the engine and the emulator run on the loop the module's tests share.
pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.store_independent]

SERVICE_NAME = "chat-service-trace-e2e"
SEND_MESSAGE = "chatbot.chat.v1.ChatService/SendMessage"
ENGINE_CALL = "chatbot.mcp.v1.EngineService/ProcessMessage"
SLACK = resources_pb2.CHANNEL_SLACK


@dataclass
class Traced:
    """The module's traced service and what it talks to."""

    service: ServiceProcess
    stub: chat_service_pb2_grpc.ChatServiceAsyncStub
    collector: TraceCollector
    engine: EngineBehaviour
    slack: SlackApiEmulator
    startup_lines: int  # log lines written before the first call


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine() -> AsyncIterator[tuple[EngineBehaviour, int]]:
    port = free_port()
    async with running_engine(port) as behaviour:
        yield behaviour, port


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def slack() -> AsyncIterator[SlackApiEmulator]:
    async with running(SlackApiEmulator()) as emulator:
        yield emulator


def _environment(engine_port: int, slack: SlackApiEmulator) -> dict[str, str]:
    return {
        "MCP_ENGINE_URL": f"127.0.0.1:{engine_port}",
        "LOG_FORMAT": "json",
        "CHANNEL_SECRETS_KEY": channel_secrets_key(),
        # Whatever the developer's shell says: the tests say whether to trace.
        "OTEL_EXPORTER_OTLP_ENDPOINT": "",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "",
        **slack.service_environment,
    }


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def traced(
    engine: tuple[EngineBehaviour, int],
    slack: SlackApiEmulator,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Traced]:
    collector_port = free_port()
    async with running_collector(collector_port) as collector:
        behaviour, engine_port = engine
        process = ServiceProcess(
            tmp_path_factory.mktemp("traced"),
            _environment(engine_port, slack)
            | {
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector_port}",
                "OTEL_SERVICE_NAME": SERVICE_NAME,
                # The batch processor's 5 s default would only slow the polls down.
                "OTEL_BSP_SCHEDULE_DELAY": "100",
            },
        )
        # In a thread: the receiver on this loop answers the service meanwhile.
        await asyncio.to_thread(process.start)
        startup_lines = len(process.logs().splitlines())
        try:
            async with service_stub(process) as stub:
                yield Traced(process, stub, collector, behaviour, slack, startup_lines)
        finally:
            await asyncio.to_thread(process.stop)


# ---------------------------------------------------------------- helpers


def new_traceparent() -> tuple[str, str, str]:
    """A caller's span: (traceparent, its trace id, its span id)."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


@dataclass(frozen=True)
class SlackThread:
    """A user's Slack conversation, started by a signed webhook (no traceparent)."""

    workspace: Workspace
    user: str
    conversation_id: str

    @property
    def channel(self) -> str:
        return self.workspace.channel

    def message(self, text: str) -> pb.SendMessageRequest:
        """A SendMessage of the user's into the conversation: its reply goes to Slack."""
        return text_request(
            text,
            message_id=str(uuid.uuid4()),
            user_id=self.user,
            conversation_id=self.conversation_id,
            channel=SLACK,
        )


async def slack_thread(client: TenantClient, slack: SlackApiEmulator) -> SlackThread:
    """A Slack connection made for `client`'s tenant (admin RPC) and a
    conversation its webhook started, answered (one post to Slack)."""
    workspace = await Workspace(client, slack).connect()
    user = slack_id("U")
    await workspace.post(workspace.event(user, "first"))
    await eventually(lambda: workspace.messages(user), answered(2))
    (conversation,) = (await client.list_conversations(channel=SLACK, user_id=user)).conversations
    return SlackThread(workspace, user, conversation.conversation_id)


def header(call: RecordedCall, name: str) -> str | None:
    return next((v for k, v in call.headers.items() if k.lower() == name), None)


def calls_to(slack: SlackApiEmulator, channel: str) -> list[RecordedCall]:
    return [c for c in slack.calls if isinstance(c.body, dict) and c.body.get("channel") == channel]


def named(spans: Sequence[ReceivedSpan], name: str) -> list[ReceivedSpan]:
    return [span for span in spans if span.name == name]


def log_records(service: ServiceProcess) -> list[dict[str, Any]]:
    return [json.loads(line) for line in service.logs().splitlines() if line]


async def server_span_of(collector: TraceCollector, message_id: str) -> ReceivedSpan:
    """The SendMessage SERVER span of the call that sent `message_id`: the
    parent of the engine span naming it."""

    def engine_call(spans: Sequence[ReceivedSpan]) -> ReceivedSpan | None:
        return next(
            (
                s
                for s in spans
                if s.name == ENGINE_CALL and s.attributes.get("chat.message_id") == message_id
            ),
            None,
        )

    engine_span = engine_call(await collector.wait_for(lambda spans: bool(engine_call(spans))))
    assert engine_span is not None

    def server(spans: Sequence[ReceivedSpan]) -> list[ReceivedSpan]:
        return [s for s in named(spans, SEND_MESSAGE) if s.span_id == engine_span.parent_span_id]

    (found,) = server(await collector.wait_for(lambda spans: bool(server(spans))))
    assert found.trace_id == engine_span.trace_id
    return found


def delivered_with(spans: Sequence[ReceivedSpan], posts: int) -> bool:
    return bool(named(spans, "chat.deliver")) and len(named(spans, "POST")) >= posts


# ------------------------------------------------------------------ tests


async def test_one_send_message_is_one_trace_through_engine_and_delivery(
    traced: Traced, request: pytest.FixtureRequest
) -> None:
    client = client_for(traced.service, traced.stub, request.node.name)
    thread = await slack_thread(client, traced.slack)
    before = len(calls_to(traced.slack, thread.channel))
    traced.engine.reset()
    # Slack refuses the first attempt (retryable): the delivery logs a warning.
    traced.slack.server_error(503)
    traceparent, trace_id, caller_span = new_traceparent()
    sent = thread.message("trace me")

    reply = await traced.stub.SendMessage(
        sent, metadata=(*client.metadata, ("traceparent", traceparent))
    )
    assert reply.response.text == "mcp heard: trace me (history 2)"
    await eventually(lambda: _posted(traced.slack, thread.channel), lambda n: n == 2)
    await traced.collector.wait_for(
        lambda received: delivered_with([s for s in received if s.trace_id == trace_id], 2)
    )
    spans = traced.collector.in_trace(trace_id)

    # Every span of the call (naming its message or its replies) is in the caller's trace.
    call_ids = {sent.message_id, *(m.message_id for m in reply.replies)}
    about = [s for s in traced.collector.spans if s.attributes.get("chat.message_id") in call_ids]
    assert {s.trace_id for s in about} == {trace_id}
    assert {ENGINE_CALL, "chat.deliver"} <= {s.name for s in about}
    assert {"chat.lock.wait", "chat.store.write", "chat.store.read_history"} <= {
        s.name for s in spans
    }
    assert {s.resource.get("service.name") for s in spans} == {SERVICE_NAME}

    # The SERVER span: the caller's span's child, described as RPC conventions say.
    (server,) = named(spans, SEND_MESSAGE)
    assert server.kind == Span.SPAN_KIND_SERVER
    assert server.parent_span_id == caller_span
    assert {k: server.attributes.get(k) for k in ("rpc.system", "rpc.service", "rpc.method")} == {
        "rpc.system": "grpc",
        "rpc.service": "chatbot.chat.v1.ChatService",
        "rpc.method": "SendMessage",
    }
    assert server.attributes["rpc.grpc.status_code"] == grpc.StatusCode.OK.value[0]
    assert server.status != Status.STATUS_CODE_ERROR

    # The engine call: a CLIENT span under the SERVER span, whose context the engine got.
    (engine_span,) = named(spans, ENGINE_CALL)
    assert engine_span.kind == Span.SPAN_KIND_CLIENT
    assert engine_span.parent_span_id == server.span_id
    assert engine_span.attributes["rpc.service"] == "chatbot.mcp.v1.EngineService"
    (engine_metadata,) = traced.engine.metadata
    assert engine_metadata.get("traceparent") == f"00-{trace_id}-{engine_span.span_id}-01"

    # The delivery, from the queue's background task: same trace, each
    # attempt's HTTP CLIENT span under it, and Slack got each one's context.
    (deliver,) = named(spans, "chat.deliver")
    assert deliver.parent_span_id == server.span_id  # what was current when it was queued
    attempts = named(spans, "chat.deliver.attempt")
    assert len(attempts) == 2
    assert {a.parent_span_id for a in attempts} == {deliver.span_id}
    posts = named(spans, "POST")
    assert {p.parent_span_id for p in posts} == {a.span_id for a in attempts}
    assert all(p.kind == Span.SPAN_KIND_CLIENT for p in posts)
    by_status = {p.attributes.get("http.response.status_code"): p for p in posts}
    assert set(by_status) == {503, 200}
    assert by_status[503].status == Status.STATUS_CODE_ERROR
    assert by_status[200].status != Status.STATUS_CODE_ERROR
    got = [header(call, "traceparent") for call in calls_to(traced.slack, thread.channel)]
    assert sorted(got[before:], key=str) == sorted(
        (f"00-{trace_id}-{p.span_id}-01" for p in posts), key=str
    )

    # The log: the delivery's warning carries the trace and the chat.deliver span.
    records = log_records(traced.service)
    warned = [
        r for r in records if r["level"] == "WARNING" and "delivery of" in r.get("message", "")
    ]
    assert [(r.get("trace_id"), r.get("span_id")) for r in warned] == [(trace_id, deliver.span_id)]
    # Lines logged outside a trace (the start-up's) carry no trace_id key.
    startup = records[: traced.startup_lines]
    assert startup
    assert [r for r in startup if "trace_id" in r or "span_id" in r] == []


async def test_a_garbage_traceparent_starts_a_new_trace(
    traced: Traced, request: pytest.FixtureRequest
) -> None:
    client = client_for(traced.service, traced.stub, request.node.name)
    garbage = (
        "not-a-traceparent",
        f"00-{'0' * 32}-{secrets.token_hex(8)}-01",  # the invalid all-zero trace id
        f"00-{secrets.token_hex(16)}-zzzzzzzzzzzzzzzz-01",
    )
    for value in garbage:
        sent = text_request("who am I", message_id=str(uuid.uuid4()))
        reply = await traced.stub.SendMessage(
            sent, metadata=(*client.metadata, ("traceparent", value))
        )
        assert reply.response.text == "mcp heard: who am I (history 0)"

        server = await server_span_of(traced.collector, sent.message_id)
        assert server.trace_id not in value
        assert server.trace_id != "0" * 32
        assert server.parent_span_id == ""  # a root: the garbage named no parent
        assert server.attributes["rpc.grpc.status_code"] == grpc.StatusCode.OK.value[0]


async def test_without_an_endpoint_nothing_carries_a_trace_context(
    engine: tuple[EngineBehaviour, int],
    slack: SlackApiEmulator,
    fresh_service: ServiceProcess,
    request: pytest.FixtureRequest,
) -> None:
    behaviour, engine_port = engine
    fresh_service.extra_env.update(_environment(engine_port, slack))
    await asyncio.to_thread(fresh_service.start)
    behaviour.reset()
    traceparent, trace_id, _ = new_traceparent()

    async with service_stub(fresh_service) as stub:
        client = client_for(fresh_service, stub, request.node.name)
        thread = await slack_thread(client, slack)
        reply = await stub.SendMessage(
            thread.message("untraced"), metadata=(*client.metadata, ("traceparent", traceparent))
        )
        assert reply.response.text == "mcp heard: untraced (history 2)"
        await eventually(lambda: _posted(slack, thread.channel), lambda n: n == 2)

    assert len(behaviour.metadata) == 2  # the webhook's message, then SendMessage's
    assert [m for m in behaviour.metadata if {"traceparent", "tracestate"} & set(m)] == []
    calls = calls_to(slack, thread.channel)
    assert len(calls) == 2
    assert [c for c in calls if header(c, "traceparent") or header(c, "tracestate")] == []
    records = log_records(fresh_service)
    assert records
    assert [r for r in records if "trace_id" in r or "span_id" in r] == []
    assert trace_id not in fresh_service.logs()


async def _posted(slack: SlackApiEmulator, channel: str) -> int:
    return len(slack.posted(channel))

"""The pipeline's spans, built through production's wiring with the SDK's
in-memory exporter: a message's steps (lock, store, engine) in the call's
trace, and its delivery, done later by another task, continuing that trace
down to the platform call, which gets the trace context (`traceparent`)."""

from __future__ import annotations

import asyncio

from opentelemetry.trace import StatusCode

from adapters.memory.locks import InProcessConversationLocks
from adapters.tracing import TracedEngine, TracedLocks, trace_headers
from chat_service.domain.content import MessageContent
from chat_service.domain.enums import Channel, MessageRole
from chat_service.domain.model import Conversation, InboundMessage, Message
from chat_service.ports import DeliveryError, DeliveryReceipt, EngineFailure
from chat_service.wiring import Services
from tests import builders
from tests.builders import TENANT
from tests.fakes import InMemoryStore, ScriptedEngine
from tests.support.tracing import Traces, parent_id, span_id, trace_id, traceparent_ids
from tests.unit.test_webhooks import fixture, make_harness

USER_TEXT = "my card number is 4242"


class HeaderSender:
    """ChannelSender: records the trace headers each attempt would send the
    platform; fails the first `failures` attempts (retryably)."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.headers: list[dict[str, str]] = []

    async def send(self, conversation: Conversation, message: Message) -> DeliveryReceipt:
        self.headers.append(trace_headers())
        if self.failures:
            self.failures -= 1
            raise DeliveryError("the platform is busy", retryable=True)
        return DeliveryReceipt(platform_message_id=f"p-{message.message_id}")


def inbound(message_id: str) -> InboundMessage:
    return InboundMessage(
        tenant_id=TENANT,
        message_id=message_id,
        conversation_id="",
        user_id="user-1",
        channel=Channel.SMS,
        content=MessageContent.of_text(USER_TEXT),
    )


def traced_core(traces: Traces, sender: HeaderSender, engine: ScriptedEngine) -> Services:
    """The core as bootstrap wires it when tracing is on: the engine and
    the locks decorated, the tracer in the pipeline."""
    return builders.build_core(
        store=InMemoryStore(),
        engine=TracedEngine(engine, traces.tracer.otel),
        senders={Channel.SMS: sender},
        locks=TracedLocks(InProcessConversationLocks(), traces.tracer),
        tracer=traces.tracer,
    )


async def send_traced(services: Services, traces: Traces, message_id: str) -> int:
    """Sends a message inside a caller's span, waits for its delivery;
    returns the caller's span id."""
    with traces.tracer.otel.start_as_current_span("caller") as caller:
        await services.send_message(inbound(message_id))
    assert await services.delivery.wait_idle(2)
    return caller.get_span_context().span_id


async def test_a_message_s_steps_and_its_delivery_are_one_trace(traces: Traces) -> None:
    sender = HeaderSender()
    services = traced_core(traces, sender, ScriptedEngine())
    caller = await send_traced(services, traces, "m-1")

    caller_span = traces.one("caller")
    steps = [span for span in traces.spans() if span.name != "caller"]
    assert {span.name for span in steps} == {
        "chat.lock.wait",
        "chat.store.read_history",
        "engine scripted",
        "chat.store.write",
        "chat.deliver",
        "chat.deliver.attempt",
    }
    assert {trace_id(span) for span in steps} == {trace_id(caller_span)}
    # The message's own steps are the call's children...
    for name in ("chat.lock.wait", "chat.store.read_history", "engine scripted"):
        assert parent_id(traces.one(name)) == caller
    assert [parent_id(span) for span in traces.named("chat.store.write")] == [caller, caller]
    # ... and so is its delivery, which the delivery queue's own task does.
    deliver = traces.one("chat.deliver")
    attempt = traces.one("chat.deliver.attempt")
    assert parent_id(deliver) == caller
    assert parent_id(attempt) == span_id(deliver)
    assert deliver.attributes is not None
    assert deliver.attributes["chat.channel"] == "sms"
    assert deliver.attributes["chat.tenant_id"] == TENANT
    # The platform is told the trace, as the attempt's child.
    [headers] = sender.headers
    assert traceparent_ids(headers["traceparent"]) == (trace_id(attempt), span_id(attempt))
    engine = traces.one("engine scripted")
    assert engine.attributes is not None
    assert engine.attributes["chat.message_id"] == "m-1"
    # No span says what the user wrote.
    for span in traces.spans():
        assert USER_TEXT not in repr(dict(span.attributes or {}))
        assert USER_TEXT not in (span.status.description or "")


async def test_each_failed_attempt_is_an_error_span_of_one_delivery(traces: Traces) -> None:
    sender = HeaderSender(failures=1)
    services = traced_core(traces, sender, ScriptedEngine())
    await send_traced(services, traces, "m-1")

    deliver = traces.one("chat.deliver")
    first, second = sorted(traces.named("chat.deliver.attempt"), key=lambda s: s.start_time or 0)
    assert parent_id(first) == parent_id(second) == span_id(deliver)
    assert first.status.status_code is StatusCode.ERROR
    assert first.status.description == "the platform is busy"
    assert first.attributes is not None
    assert first.attributes["chat.delivery.retryable"] is True
    assert second.status.status_code is StatusCode.UNSET
    assert deliver.status.status_code is StatusCode.UNSET
    # Each attempt told the platform its own span.
    assert [traceparent_ids(h["traceparent"])[1] for h in sender.headers] == [
        span_id(first),
        span_id(second),
    ]


class GatedSender(HeaderSender):
    """HeaderSender whose first attempt waits for `gate`: the conversation's
    delivery worker is still busy with it when the next reply is queued."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.sending = asyncio.Event()

    async def send(self, conversation: Conversation, message: Message) -> DeliveryReceipt:
        if not self.headers:
            self.sending.set()
            await self.gate.wait()
        return await super().send(conversation, message)


async def test_two_calls_on_one_conversation_deliver_in_their_own_traces(
    traces: Traces,
) -> None:
    # The conversation's delivery worker is one task for both replies: each
    # must still continue the call that queued it, not the first call.
    sender = GatedSender()
    services = traced_core(traces, sender, ScriptedEngine())
    with traces.tracer.otel.start_as_current_span("caller"):
        first = await services.send_message(inbound("m-1"))
    await sender.sending.wait()  # the worker holds the first reply
    with traces.tracer.otel.start_as_current_span("caller"):
        await services.send_message(
            InboundMessage(
                tenant_id=TENANT,
                message_id="m-2",
                conversation_id=first.result.conversation_id,
                user_id="user-1",
                channel=Channel.SMS,
                content=MessageContent.of_text("again"),
            )
        )
    # Both replies queued (2) for the one worker (1) of the conversation.
    assert services.delivery.pending == 3
    sender.gate.set()
    assert await services.delivery.wait_idle(2)

    callers = {trace_id(span): span_id(span) for span in traces.named("caller")}
    assert len(callers) == 2
    delivers = traces.named("chat.deliver")
    assert len(delivers) == 2
    assert {trace_id(span): parent_id(span) for span in delivers} == callers


async def test_an_engine_failure_marks_its_span_and_the_fallback_is_delivered(
    traces: Traces,
) -> None:
    engine = ScriptedEngine()
    engine.failure = EngineFailure("unavailable", "UNAVAILABLE: engine at 10.0.0.7 down")
    sender = HeaderSender()
    services = traced_core(traces, sender, engine)
    await send_traced(services, traces, "m-1")

    span = traces.one("engine scripted")
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "unavailable"  # the reason, not the detail
    assert span.attributes is not None
    assert span.attributes["chat.engine.failure"] == "unavailable"
    assert len(sender.headers) == 1  # the fallback reply went out, traced
    assert traces.one("chat.deliver.attempt").status.status_code is StatusCode.UNSET


async def test_a_delivery_queued_outside_a_trace_starts_its_own(traces: Traces) -> None:
    # What a crashed process left PENDING (resume_pending, run_sweeps) has
    # no call to continue; nor does it join whatever the worker started in.
    store = InMemoryStore()
    sender = HeaderSender()
    services = builders.build_core(store=store, senders={Channel.SMS: sender}, tracer=traces.tracer)
    conversation = builders.make_conversation(channel=Channel.SMS)
    first, second = (
        builders.make_message(conversation, sequence, role=MessageRole.BOT) for sequence in (1, 2)
    )
    await store.write(builders.create_change(conversation, [first, second]))
    with traces.tracer.otel.start_as_current_span("call"):
        services.delivery.submit(conversation, [first])
    services.delivery.submit(conversation, [second])  # outside any span
    assert await services.delivery.wait_idle(2)

    call = traces.one("call")
    by_message = {
        (span.attributes or {})["chat.message_id"]: span for span in traces.named("chat.deliver")
    }
    assert parent_id(by_message[first.message_id]) == span_id(call)
    assert parent_id(by_message[second.message_id]) is None
    assert trace_id(by_message[second.message_id]) != trace_id(call)
    assert traceparent_ids(sender.headers[1]["traceparent"])[0] == trace_id(
        by_message[second.message_id]
    )


async def test_a_webhook_message_is_one_trace_from_the_inbox_to_its_delivery(
    traces: Traces,
) -> None:
    # The webhook's own call ends once the delivery is in the inbox: the
    # worker that handles it later starts the message's trace.
    harness = await make_harness(tracer=traces.tracer)
    await harness.post("whatsapp", fixture("whatsapp", "text_message"))
    assert await harness.work() == 1
    assert await harness.core.delivery.wait_idle(2)
    await harness.core.delivery.close(1)

    inbox = traces.one("chat.inbox.message")
    assert inbox.parent is None
    assert inbox.attributes is not None
    assert inbox.attributes["chat.channel"] == "whatsapp"
    assert {trace_id(span) for span in traces.spans()} == {trace_id(inbox)}
    assert {parent_id(span) for span in traces.named("chat.store.write")} == {span_id(inbox)}
    assert parent_id(traces.one("chat.deliver")) == span_id(inbox)

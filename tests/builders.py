"""Small factories of domain objects for tests: sensible defaults, override
what the test is about; and the core itself, wired as production wires it,
around fakes (`build_core`)."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from opentelemetry import trace

from adapters.secrets import AesGcmSecretBox
from chat_service.auth import JwtVerifier
from chat_service.bootstrap import in_process_coordination
from chat_service.config import RateLimit, Settings
from chat_service.domain.content import MessageContent
from chat_service.domain.enums import (
    Channel,
    ConversationStatus,
    DeliveryStatus,
    MessageRole,
)
from chat_service.domain.events import DomainEvent, EventType
from chat_service.domain.model import (
    Conversation,
    ConversationState,
    IdempotencyRecord,
    Message,
    SendResult,
)
from chat_service.pipeline.delivery import DeliveryPolicy
from chat_service.pipeline.page_tokens import PageTokens
from chat_service.ports import (
    ChannelSender,
    Clock,
    ConversationChange,
    ConversationLocks,
    ConversationStore,
    Engine,
    EventPublisher,
    InboundChannel,
    LiveBus,
    Metrics,
    NoMetrics,
    NoTracer,
    SecretBox,
    SessionCache,
    Tracer,
    VersionConflict,
)
from chat_service.wiring import Parts, Services, Tuning, wire
from tests.fakes import (
    InMemoryChannelStore,
    InMemoryStore,
    RecordingPublisher,
    ScriptedEngine,
    SteppingClock,
)

TENANT = "tenant-a"
OTHER_TENANT = "tenant-b"
# A fixed, microsecond-precise instant: what stores keep, they give back equal.
T0 = datetime(2026, 11, 25, 8, 0, 0, 123456, tzinfo=UTC)

_ids = itertools.count(1)


def new_id(prefix: str) -> str:
    """Unique within the test run, readable in failure output."""
    return f"{prefix}-{next(_ids)}"


def make_conversation(**overrides: Any) -> Conversation:
    """A stored-looking conversation: version 1, no messages yet."""
    fields: dict[str, Any] = {
        "conversation_id": new_id("conv"),
        "tenant_id": TENANT,
        "user_id": "user-1",
        "channel": Channel.WEB,
        "status": ConversationStatus.ACTIVE,
        "created_at": T0,
        "updated_at": T0,
        "version": 1,
    }
    return Conversation(**(fields | overrides))


def make_message(
    conversation: Conversation, sequence: int, text: str = "hello", **overrides: Any
) -> Message:
    fields: dict[str, Any] = {
        "message_id": new_id("msg"),
        "tenant_id": conversation.tenant_id,
        "conversation_id": conversation.conversation_id,
        "sequence": sequence,
        "role": MessageRole.USER,
        "channel": conversation.channel,
        "user_id": conversation.user_id,
        "content": MessageContent.of_text(text),
        "created_at": conversation.created_at + timedelta(seconds=sequence),
        "delivery_status": DeliveryStatus.PENDING,
    }
    return Message(**(fields | overrides))


def make_event(
    conversation: Conversation,
    event_type: EventType = EventType.MESSAGE_RECEIVED,
    message: Message | None = None,
    **overrides: Any,
) -> DomainEvent:
    fields: dict[str, Any] = {
        "event_id": new_id("evt"),
        "event_type": event_type,
        "tenant_id": conversation.tenant_id,
        "conversation_id": conversation.conversation_id,
        "occurred_at": conversation.updated_at,
        "channel": conversation.channel,
        "user_id": conversation.user_id,
    }
    if message is not None:
        fields |= {
            "message_type": message.content.type,
            "message_id": message.message_id,
            "sequence": message.sequence,
        }
    return DomainEvent(**(fields | overrides))


def make_send_result(message: Message, *replies: Message, **overrides: Any) -> SendResult:
    fields: dict[str, Any] = {
        "message_id": message.message_id,
        "conversation_id": message.conversation_id,
        "sequence": message.sequence,
        "state": ConversationState(current_intent="greet", slots={"name": "Ada"}),
        "replies": replies,
        "response": replies[0].content if replies else None,
        "engine": "rules",
        "engine_latency_ms": 12.5,
        "confidence_scores": {"greet": 0.93},
    }
    return SendResult(**(fields | overrides))


def make_record(message: Message, *replies: Message, **overrides: Any) -> IdempotencyRecord:
    fields: dict[str, Any] = {
        "tenant_id": message.tenant_id,
        "message_id": message.message_id,
        "fingerprint": f"sha256:{message.message_id}",
        "result": make_send_result(message, *replies),
        "created_at": message.created_at,
    }
    return IdempotencyRecord(**(fields | overrides))


def create_change(
    conversation: Conversation,
    messages: Iterable[Message] = (),
    events: Iterable[DomainEvent] = (),
    record: IdempotencyRecord | None = None,
) -> ConversationChange:
    """Creates `conversation` (as version 1) with its first messages."""
    messages = tuple(messages)
    created = dataclasses.replace(
        conversation, version=1, last_sequence=_last_sequence(conversation, messages)
    )
    return ConversationChange(created, 0, messages, tuple(events), record)


def update_change(
    conversation: Conversation,
    messages: Iterable[Message] = (),
    events: Iterable[DomainEvent] = (),
    record: IdempotencyRecord | None = None,
    **changes: Any,
) -> ConversationChange:
    """Moves the stored `conversation` one version on, appending `messages`."""
    messages = tuple(messages)
    updated = dataclasses.replace(
        conversation,
        version=conversation.version + 1,
        last_sequence=_last_sequence(conversation, messages),
        **changes,
    )
    return ConversationChange(updated, conversation.version, messages, tuple(events), record)


def _last_sequence(conversation: Conversation, messages: tuple[Message, ...]) -> int:
    return max((m.sequence for m in messages), default=conversation.last_sequence)


async def append_retrying(
    store: ConversationStore, conversation_id: str, text: str, tenant_id: str = TENANT
) -> None:
    """Read, append one message with its event, write; start over when another
    writer won (a VersionConflict): what a writer without a lock must do."""
    while True:
        current = await store.get_conversation(tenant_id, conversation_id)
        assert current is not None
        message = make_message(current, current.last_sequence + 1, text)
        try:
            await store.write(
                update_change(current, [message], [make_event(current, message=message)])
            )
            return
        except VersionConflict:
            await asyncio.sleep(0.001)


# ------------------------------------------------------------------ the core

# Production's settings, with waits short enough for unit tests and a rate
# limit no test reaches by accident.
CORE_SETTINGS = Settings(
    mcp_engine_timeout_ms=500,
    lock_timeout_ms=5_000,
    stream_buffer_size=64,
    fallback_text="Sorry, try later.",
    rate_limit=RateLimit(rate=1000.0, burst=1000),
)
FAST = Tuning(delivery=DeliveryPolicy(attempts=3, first_backoff=0.001))
_JWT_SECRET = "unit-tests-only-" * 2  # HS256 wants 32 bytes
# A real box with a fixed key: what unit tests seal, they can open.
TEST_SECRET_KEY = bytes(range(32))


def make_secret_box() -> AesGcmSecretBox:
    return AesGcmSecretBox([("unit", TEST_SECRET_KEY)])


def build_core(
    *,
    store: ConversationStore | None = None,
    channels: InMemoryChannelStore | None = None,
    engine: Engine | None = None,
    clock: Clock | None = None,
    publisher: EventPublisher | None = None,
    senders: Mapping[Channel, ChannelSender] | None = None,
    locks: ConversationLocks | None = None,
    sessions: SessionCache | None = None,
    bus: LiveBus | None = None,
    state_cache: SessionCache | None = None,
    secret_box: SecretBox | None = None,
    inbound: Mapping[Channel, InboundChannel] | None = None,
    settings: Settings = CORE_SETTINGS,
    tuning: Tuning = FAST,
    tracer: Tracer | None = None,
    rpc_tracer: trace.Tracer | None = None,
    metrics: Metrics | None = None,
) -> Services:
    """The core through production's wiring (chat_service.wiring.wire), with
    fakes for the store, engine, clock and publisher, the in-process
    coordination production uses in one process, and whatever a test passes
    instead. Nothing runs until `start()`; close what a test used (e.g.
    `delivery.close`)."""
    coordination = in_process_coordination(settings)
    coordination = dataclasses.replace(
        coordination,
        locks=coordination.locks if locks is None else locks,
        sessions=coordination.sessions if sessions is None else sessions,
        bus=coordination.bus if bus is None else bus,
    )
    channels = InMemoryChannelStore() if channels is None else channels
    parts = Parts(
        store=InMemoryStore() if store is None else store,
        connections=channels,
        inbox=channels,
        coordination=coordination,
        publisher=RecordingPublisher() if publisher is None else publisher,
        engine=ScriptedEngine() if engine is None else engine,
        clock=SteppingClock(T0) if clock is None else clock,
        verifier=JwtVerifier(secret=_JWT_SECRET),
        tokens=PageTokens.ephemeral(),
        relay_owner="unit-core",
        secret_box=make_secret_box() if secret_box is None else secret_box,
        senders={} if senders is None else senders,
        inbound={} if inbound is None else inbound,
        state_cache=state_cache,
        tracer=NoTracer() if tracer is None else tracer,
        rpc_tracer=rpc_tracer,
        metrics=NoMetrics() if metrics is None else metrics,
    )
    return wire(parts, settings, tuning)

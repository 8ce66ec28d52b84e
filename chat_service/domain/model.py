"""Conversations, messages, and the commands and results of the use cases."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeAlias

from chat_service.domain.content import MessageContent
from chat_service.domain.enums import (
    Channel,
    ConversationStatus,
    DeliveryStatus,
    MessageRole,
    MessageType,
    Priority,
)

# What google.protobuf.Struct holds, and what the stores keep as JSON.
JsonValue: TypeAlias = (
    "bool | int | float | str | Sequence[JsonValue] | Mapping[str, JsonValue] | None"
)
JsonObject: TypeAlias = Mapping[str, JsonValue]


def _empty() -> JsonObject:
    return {}


@dataclass(frozen=True, slots=True)
class ChannelMetadata:
    platform_message_id: str = ""
    platform_user_id: str = ""
    thread_id: str = ""
    workspace_id: str = ""
    additional_data: JsonObject = field(default_factory=_empty)


@dataclass(frozen=True, slots=True)
class ProcessingHints:
    priority: Priority = Priority.NORMAL
    expected_response_type: MessageType | None = None
    bypass_automation: bool = False
    require_human_review: bool = False


@dataclass(frozen=True, slots=True)
class ConversationState:
    """The bot engine's view of a conversation (the seed's ConversationContext)."""

    current_intent: str = ""
    entities: JsonObject = field(default_factory=_empty)
    slots: JsonObject = field(default_factory=_empty)
    user_profile: JsonObject = field(default_factory=_empty)
    conversation_stage: str = ""


@dataclass(frozen=True, slots=True)
class Conversation:
    conversation_id: str
    tenant_id: str
    user_id: str
    channel: Channel
    status: ConversationStatus
    created_at: datetime
    updated_at: datetime
    # Sequence of the newest message; 0 when empty. Sequences have no gaps.
    last_sequence: int = 0
    # Optimistic-concurrency version: every write must name the version it
    # read, so a writer that lost its lock cannot overwrite a newer state.
    version: int = 0
    session_id: str = ""
    state: ConversationState = field(default_factory=ConversationState)
    channel_metadata: ChannelMetadata = field(default_factory=ChannelMetadata)
    status_reason: str = ""

    def continues_session(self, user_id: str, channel: Channel | None) -> bool:
        """Whether a session's next message (of `user_id`, on `channel`) goes
        on here: the same user's conversation, on the same channel, not closed."""
        return not self.status.is_closed and self.user_id == user_id and self.channel == channel


@dataclass(frozen=True, slots=True)
class Message:
    message_id: str
    tenant_id: str
    conversation_id: str
    sequence: int
    role: MessageRole
    channel: Channel
    user_id: str
    content: MessageContent
    created_at: datetime
    delivery_status: DeliveryStatus
    client_time: datetime | None = None
    channel_metadata: ChannelMetadata = field(default_factory=ChannelMetadata)
    reply_to_message_id: str = ""
    # Inbound messages: digest of the request that created them, so that a
    # reused message_id with different content is told apart from a retry.
    fingerprint: str = ""


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """An end user's message as a caller hands it in (SendMessage, streams, webhooks)."""

    tenant_id: str
    message_id: str
    conversation_id: str
    user_id: str
    channel: Channel | None
    content: MessageContent
    session_id: str = ""
    timestamp: datetime | None = None
    channel_metadata: ChannelMetadata = field(default_factory=ChannelMetadata)
    processing_hints: ProcessingHints = field(default_factory=ProcessingHints)


@dataclass(frozen=True, slots=True)
class SendResult:
    """What SendMessage answers; stored whole, so that a retry gets the same answer."""

    message_id: str
    conversation_id: str
    sequence: int
    state: ConversationState
    replies: tuple[Message, ...] = ()
    # The engine's first reply as it produced it (before channel formatting).
    response: MessageContent | None = None
    engine: str = "none"
    engine_latency_ms: float = 0.0
    fallback_used: bool = False
    fallback_reason: str = ""
    confidence_scores: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    tenant_id: str
    message_id: str
    fingerprint: str
    result: SendResult
    created_at: datetime

"""Conversations, messages, and the commands and results of the use cases."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
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
from chat_service.domain.errors import FailedPrecondition, conversation_not_found

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


# The keys of a first message's additional_data that hold for its whole
# conversation: the platform connection (webhooks set it; the platform
# senders send the replies through it).
CONVERSATION_ADDITIONAL_DATA = frozenset({"connection_id"})


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

    @classmethod
    def start(
        cls,
        *,
        conversation_id: str,
        tenant_id: str,
        user_id: str,
        channel: Channel,
        at: datetime,
        session_id: str = "",
        channel_metadata: ChannelMetadata | None = None,
    ) -> Conversation:
        """A new conversation, not stored yet (version 0). Of its first
        message's channel metadata it keeps what holds for the whole
        conversation (platform user, thread, workspace, and the channel
        connection its replies go out through), not that message's own
        platform id and other extra data."""
        metadata = channel_metadata or ChannelMetadata()
        kept = {
            key: value
            for key, value in metadata.additional_data.items()
            if key in CONVERSATION_ADDITIONAL_DATA
        }
        return cls(
            conversation_id=conversation_id,
            tenant_id=tenant_id,
            user_id=user_id,
            channel=channel,
            status=ConversationStatus.ACTIVE,
            created_at=at,
            updated_at=at,
            session_id=session_id,
            channel_metadata=replace(metadata, platform_message_id="", additional_data=kept),
        )

    @property
    def is_new(self) -> bool:
        """Not stored yet: its first write creates it."""
        return self.version == 0

    def continues_session(self, user_id: str, channel: Channel | None) -> bool:
        """Whether a session's next message (of `user_id`, on `channel`) goes
        on here: the same user's conversation, on the same channel, not closed."""
        return not self.status.is_closed and self.user_id == user_id and self.channel == channel

    def check_participant(
        self, *, user_id: str, channel: Channel | None = None, field_prefix: str = ""
    ) -> None:
        """CONVERSATION_MISMATCH unless `user_id` and `channel` (each where
        given) are the conversation's."""
        differs = {
            "channel": channel is not None and channel != self.channel,
            "user_id": bool(user_id) and user_id != self.user_id,
        }
        fields = [f"{field_prefix}{name}" for name, differ in differs.items() if differ]
        if fields:
            verb = "differs" if len(fields) == 1 else "differ"
            raise FailedPrecondition(
                f"{' and '.join(fields)} {verb} from the conversation's",
                reason="CONVERSATION_MISMATCH",
                metadata={"conversation_id": self.conversation_id, "fields": ",".join(fields)},
            )

    def check_accepts_message(
        self, *, user_id: str, channel: Channel | None, field_prefix: str = ""
    ) -> None:
        """Who may write here: the conversation's own user, on its channel,
        while it is open (CONVERSATION_CLOSED, CONVERSATION_MISMATCH)."""
        if self.status.is_closed:
            raise FailedPrecondition(
                f"conversation is {self.status.value}; start a new one",
                reason="CONVERSATION_CLOSED",
                metadata={"conversation_id": self.conversation_id, "status": self.status.value},
            )
        self.check_participant(user_id=user_id, channel=channel, field_prefix=field_prefix)

    @property
    def may_escalate(self) -> bool:
        """Whether the bot (or a review hint) may hand it to a human: the
        same rule as UpdateConversationStatus, and not twice."""
        return self.status is not ConversationStatus.ESCALATED and self.status.can_become(
            ConversationStatus.ESCALATED
        )

    def moved_to(self, status: ConversationStatus, *, reason: str, at: datetime) -> Conversation:
        """The conversation after an operator's status change
        (INVALID_STATUS_TRANSITION where the status may not go there)."""
        if not self.status.can_become(status):
            raise FailedPrecondition(
                f"cannot go from {self.status.value} to {status.value}",
                reason="INVALID_STATUS_TRANSITION",
                metadata={"from": self.status.value, "to": status.value},
            )
        return replace(
            self, status=status, status_reason=reason, updated_at=at, version=self.version + 1
        )


def conversation_of(
    tenant_id: str, conversation_id: str, found: Conversation | None
) -> Conversation:
    """`found` (what a lookup of `conversation_id` gave) as `tenant_id` may
    see it: NOT_FOUND when missing or another tenant's, one answer for both
    so that another tenant's conversation is not even revealed to exist."""
    if found is None or found.tenant_id != tenant_id:
        raise conversation_not_found(conversation_id)
    return found


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

    @property
    def is_outbound(self) -> bool:
        """Sent to the user (the bot's or an agent's): delivered and read."""
        return self.role is not MessageRole.USER


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
    # Built by the webhook inbox from a verified platform call: only such a
    # message may carry the routing metadata replies are sent by
    # (domain.webhooks.reserved_metadata_key).
    from_platform: bool = False


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

    @classmethod
    def of(
        cls,
        message: Message,
        conversation: Conversation,
        *,
        replies: tuple[Message, ...] = (),
        response: MessageContent | None = None,
        engine: str = "none",
        engine_latency_ms: float = 0.0,
        fallback_reason: str = "",
        confidence_scores: Mapping[str, float] | None = None,
    ) -> SendResult:
        """The answer to `message`, with `conversation` as it is after it
        (and after its replies, if any)."""
        return cls(
            message_id=message.message_id,
            conversation_id=conversation.conversation_id,
            sequence=message.sequence,
            state=conversation.state,
            replies=replies,
            response=response,
            engine=engine,
            engine_latency_ms=engine_latency_ms,
            fallback_used=bool(fallback_reason),
            fallback_reason=fallback_reason,
            confidence_scores=dict(confidence_scores or {}),
        )


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    tenant_id: str
    message_id: str
    fingerprint: str
    result: SendResult
    created_at: datetime

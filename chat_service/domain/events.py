"""Conversation events: written to the outbox with the change they describe."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from chat_service.domain.enums import Channel, ConversationStatus, MessageType
from chat_service.domain.model import JsonObject


class EventType(StrEnum):
    CONVERSATION_STARTED = "conversation.started"
    MESSAGE_RECEIVED = "message.received"
    MESSAGE_SENT = "message.sent"
    DELIVERY_UPDATED = "message.delivery_updated"
    STATUS_CHANGED = "conversation.status_changed"
    FALLBACK_USED = "engine.fallback_used"


def _empty() -> JsonObject:
    return {}


@dataclass(frozen=True, slots=True)
class DomainEvent:
    event_id: str
    event_type: EventType
    tenant_id: str
    conversation_id: str
    occurred_at: datetime
    channel: Channel
    user_id: str
    message_type: MessageType | None = None
    message_id: str = ""
    sequence: int = 0
    metadata: JsonObject = field(default_factory=_empty)
    # The conversation's status right after the event (what Watch filters on).
    conversation_status: ConversationStatus | None = None


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """An event in the outbox; `position` orders all events of a store."""

    position: int
    event: DomainEvent

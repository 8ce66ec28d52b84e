"""Builders of the conversation events the use cases write to the outbox."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import datetime

from chat_service.domain.enums import ConversationStatus, DeliveryStatus
from chat_service.domain.events import DomainEvent, EventType
from chat_service.domain.model import Conversation, JsonObject, Message


def _new_id() -> str:
    return str(uuid.uuid4())


def conversation_event(
    event_type: EventType,
    conversation: Conversation,
    at: datetime,
    metadata: JsonObject | None = None,
) -> DomainEvent:
    return DomainEvent(
        event_id=_new_id(),
        event_type=event_type,
        tenant_id=conversation.tenant_id,
        conversation_id=conversation.conversation_id,
        occurred_at=at,
        channel=conversation.channel,
        user_id=conversation.user_id,
        sequence=conversation.last_sequence,
        metadata=metadata or {},
        conversation_status=conversation.status,
    )


def message_event(
    event_type: EventType,
    message: Message,
    status: ConversationStatus,
    metadata: JsonObject | None = None,
) -> DomainEvent:
    return DomainEvent(
        event_id=_new_id(),
        event_type=event_type,
        tenant_id=message.tenant_id,
        conversation_id=message.conversation_id,
        occurred_at=message.created_at,
        channel=message.channel,
        user_id=message.user_id,
        message_type=message.content.type,
        message_id=message.message_id,
        sequence=message.sequence,
        metadata={"role": message.role.value, **(metadata or {})},
        conversation_status=status,
    )


def status_changed(
    conversation: Conversation,
    previous: ConversationStatus,
    at: datetime,
    reason: str,
) -> DomainEvent:
    return conversation_event(
        EventType.STATUS_CHANGED,
        conversation,
        at,
        {"from": previous.value, "to": conversation.status.value, "reason": reason},
    )


def delivery_updated(
    conversation: Conversation,
    message: Message,
    status: DeliveryStatus,
    at: datetime,
    metadata: JsonObject | None = None,
) -> DomainEvent:
    event = message_event(
        EventType.DELIVERY_UPDATED,
        message,
        conversation.status,
        {"delivery_status": status.value, **(metadata or {})},
    )
    return replace(event, occurred_at=at)

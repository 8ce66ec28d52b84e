"""Conversation events: written to the outbox with the change they describe."""

from __future__ import annotations

import os
import random
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum

from chat_service.domain.enums import Channel, ConversationStatus, DeliveryStatus, MessageType
from chat_service.domain.model import Conversation, JsonObject, Message


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


@dataclass(frozen=True, slots=True, weakref_slot=True)  # (see domain/live.py)
class OutboxEntry:
    """An event in the outbox; `position` orders all events of a store."""

    position: int
    event: DomainEvent


# Builders of the events the use cases write. Each event gets a new random
# id (the outbox and Kafka consumers deduplicate by it).


def _new_id() -> str:
    """A random (version 4) UUID, as uuid.uuid4() makes, without its
    os.urandom call per id (a system call that also lets go of the GIL, on
    the event loop's thread). The 122 random bits come from a generator of
    this process seeded with 19937 bits from os.urandom, and seeded anew in
    a forked child (which would otherwise repeat its parent's ids): ids of
    different processes are as unlikely to collide as uuid4's. Not
    unguessable, which an event id need not be."""
    global _ids
    ids = _ids
    if ids is None:
        ids = _ids = _id_generator()
    return str(uuid.UUID(int=ids.getrandbits(128), version=4))


_ids: random.Random | None = None  # made on first use


def _id_generator() -> random.Random:
    # Seeded from os.urandom; unique ids, not secret ones, are wanted.
    ids = random.Random()  # noqa: S311
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=ids.seed)
    return ids


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

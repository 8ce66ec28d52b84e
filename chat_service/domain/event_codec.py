"""Conversation events and live events <-> their documents.

Domain events are stored in the outbox and published from it, so their
document is a stored shape like any other (serialization's conventions).
Live events are never stored: their documents only cross the live bus
(Redis pub/sub) between processes, tagged with a `kind` to dispatch on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from chat_service.domain.conversation_codec import message_from_dict, message_to_dict
from chat_service.domain.enums import (
    Channel,
    ConversationStatus,
    DeliveryStatus,
    MessageRole,
    MessageType,
)
from chat_service.domain.events import DomainEvent, EventType
from chat_service.domain.live import (
    DeliveryChanged,
    LiveEvent,
    MessageStored,
    ReadThrough,
    StatusChanged,
    TypingChanged,
)
from chat_service.domain.serialization import (
    Document,
    enum_value,
    format_datetime,
    optional,
    parse_datetime,
    present_fields,
    without_defaults,
)

# --------------------------------------------------------------------- events


def event_to_dict(event: DomainEvent) -> Document:
    return without_defaults(
        event,
        {
            "event_id": event.event_id,
            "event_type": event.event_type.value,
            "tenant_id": event.tenant_id,
            "conversation_id": event.conversation_id,
            "occurred_at": format_datetime(event.occurred_at),
            "channel": event.channel.value,
            "user_id": event.user_id,
            "message_type": enum_value(event.message_type),
            "message_id": event.message_id,
            "sequence": event.sequence,
            "metadata": dict(event.metadata),
            "conversation_status": enum_value(event.conversation_status),
        },
    )


def event_from_dict(data: Mapping[str, Any]) -> DomainEvent:
    return DomainEvent(
        event_id=str(data["event_id"]),
        event_type=EventType(data["event_type"]),
        tenant_id=str(data["tenant_id"]),
        conversation_id=str(data["conversation_id"]),
        occurred_at=parse_datetime(data["occurred_at"]),
        channel=Channel(data["channel"]),
        user_id=str(data["user_id"]),
        **present_fields(
            data,
            message_type=optional(MessageType),
            message_id=str,
            sequence=int,
            metadata=dict,
            conversation_status=optional(ConversationStatus),
        ),
    )


# ---------------------------------------------------------------- live events


def live_event_to_dict(event: LiveEvent) -> Document:
    """A live event with its `kind`, the key its decoder dispatches on."""
    match event:
        case MessageStored(message=message):
            return {"kind": "message_stored", "message": message_to_dict(message)}
        case DeliveryChanged(
            message_id=message_id,
            sequence=sequence,
            status=status,
            platform_message_id=platform_message_id,
        ):
            return {
                "kind": "delivery_changed",
                "message_id": message_id,
                "sequence": sequence,
                "status": status.value,
                "platform_message_id": platform_message_id,
            }
        case StatusChanged(previous=previous, current=current, reason=reason):
            return {
                "kind": "status_changed",
                "previous": previous.value,
                "current": current.value,
                "reason": reason,
            }
        case TypingChanged(role=role, typing=typing, origin=origin):
            return {
                "kind": "typing_changed",
                "role": role.value,
                "typing": typing,
                "origin": origin,
            }
        case ReadThrough(role=role, sequence=sequence, origin=origin):
            return {
                "kind": "read_through",
                "role": role.value,
                "sequence": sequence,
                "origin": origin,
            }
    raise TypeError(f"not a live event: {event!r}")


def live_event_from_dict(data: Mapping[str, Any]) -> LiveEvent:
    kind = data["kind"]
    if kind == "message_stored":
        return MessageStored(message_from_dict(data["message"]))
    if kind == "delivery_changed":
        return DeliveryChanged(
            message_id=str(data["message_id"]),
            sequence=int(data["sequence"]),
            status=DeliveryStatus(data["status"]),
            platform_message_id=str(data.get("platform_message_id", "")),
        )
    if kind == "status_changed":
        return StatusChanged(
            previous=ConversationStatus(data["previous"]),
            current=ConversationStatus(data["current"]),
            reason=str(data["reason"]),
        )
    if kind == "typing_changed":
        return TypingChanged(
            role=MessageRole(data["role"]), typing=bool(data["typing"]), origin=str(data["origin"])
        )
    if kind == "read_through":
        return ReadThrough(
            role=MessageRole(data["role"]),
            sequence=int(data["sequence"]),
            origin=str(data["origin"]),
        )
    raise ValueError(f"unknown live event kind {kind!r}")

"""A domain event as a Kafka record: key, protobuf value and headers."""

from __future__ import annotations

from dataclasses import dataclass

from chat_service.domain.events import DomainEvent
from chat_service.protomap.events import event_to_proto

# Header names: consumers route and decode by these without parsing the value.
EVENT_TYPE_HEADER = "event_type"
SCHEMA_HEADER = "schema"
EVENT_ID_HEADER = "event_id"


@dataclass(frozen=True, slots=True)
class EventRecord:
    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...]


def event_record(event: DomainEvent) -> EventRecord:
    """Keyed by conversation id, so that one conversation's events share a
    partition and keep their order; the value is a binary
    chatbot.events.v1.ConversationEvent."""
    message = event_to_proto(event)
    return EventRecord(
        key=event.conversation_id.encode(),
        value=message.SerializeToString(),
        headers=(
            (EVENT_TYPE_HEADER, event.event_type.value.encode()),
            (SCHEMA_HEADER, message.DESCRIPTOR.full_name.encode()),
            (EVENT_ID_HEADER, event.event_id.encode()),
        ),
    )

"""A domain event as a chatbot.events.v1.ConversationEvent: what is
published to Kafka and streamed by WatchConversations."""

from __future__ import annotations

from chatbot.events.v1 import conversation_event_pb2

from chat_service.domain.events import DomainEvent
from chat_service.protomap.wellknown import datetime_to_timestamp, dict_to_struct_or_none


def event_to_proto(event: DomainEvent) -> conversation_event_pb2.ConversationEvent:
    """A domain event as published to Kafka and streamed by WatchConversations.

    The event carries the domain's plain strings ("whatsapp", "text"), not
    proto enums, so that analytics consumers need no enum tables.
    """
    return conversation_event_pb2.ConversationEvent(
        event_id=event.event_id,
        event_type=event.event_type.value,
        tenant_id=event.tenant_id,
        conversation_id=event.conversation_id,
        timestamp=datetime_to_timestamp(event.occurred_at),
        channel=event.channel.value,
        user_id=event.user_id,
        message_type=event.message_type.value if event.message_type is not None else "",
        metadata=dict_to_struct_or_none(event.metadata),
        message_id=event.message_id,
        sequence=event.sequence,
        conversation_status=(
            event.conversation_status.value if event.conversation_status is not None else ""
        ),
    )

"""Turns what was committed into live events on the bus."""

from __future__ import annotations

from chat_service.domain.enums import ConversationStatus, DeliveryStatus
from chat_service.domain.events import EventType
from chat_service.domain.live import (
    DeliveryChanged,
    MessageStored,
    StatusChanged,
    conversation_topic,
)
from chat_service.domain.model import Message
from chat_service.ports import ConversationChange, LiveBus


class LiveFeed:
    def __init__(self, bus: LiveBus) -> None:
        self._bus = bus

    def committed(self, change: ConversationChange) -> None:
        """A ConversationWriter listener: the change's messages and status
        changes, in the order they were written."""
        conversation = change.conversation
        topic = conversation_topic(conversation.tenant_id, conversation.conversation_id)
        for message in change.messages:
            self._bus.publish(topic, MessageStored(message))
        for event in change.events:
            if event.event_type is EventType.STATUS_CHANGED:
                metadata = event.metadata
                self._bus.publish(
                    topic,
                    StatusChanged(
                        previous=ConversationStatus(str(metadata["from"])),
                        current=ConversationStatus(str(metadata["to"])),
                        reason=str(metadata.get("reason", "")),
                    ),
                )

    def delivery_changed(self, message: Message, status: DeliveryStatus) -> None:
        """A DeliveryQueue listener (and read receipts)."""
        self._bus.publish(
            conversation_topic(message.tenant_id, message.conversation_id),
            DeliveryChanged(
                message.message_id,
                message.sequence,
                status,
                message.channel_metadata.platform_message_id,
            ),
        )

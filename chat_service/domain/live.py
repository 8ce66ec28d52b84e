"""What open streams hear about a conversation as it happens.

Live events are ephemeral notifications, not records: a stream that misses
one recovers from the store (messages have gap-free sequences), so the bus
that carries them may drop, and only needs to be fast.

The bus hands one event object to every stream of its conversation; they can
be weakly referenced so that the gRPC layer keeps the frame built for one
just as long as the event itself lives (grpc_api/streaming.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

from chat_service.domain.enums import ConversationStatus, DeliveryStatus, MessageRole
from chat_service.domain.model import Message


@dataclass(frozen=True, slots=True, weakref_slot=True)
class MessageStored:
    message: Message


@dataclass(frozen=True, slots=True, weakref_slot=True)
class DeliveryChanged:
    message_id: str
    sequence: int
    status: DeliveryStatus
    # The platform's id for the message, once it has one.
    platform_message_id: str = ""


@dataclass(frozen=True, slots=True, weakref_slot=True)
class StatusChanged:
    previous: ConversationStatus
    current: ConversationStatus
    reason: str


@dataclass(frozen=True, slots=True, weakref_slot=True)
class TypingChanged:
    role: MessageRole
    typing: bool
    origin: str  # the stream it came from, which does not hear it back


@dataclass(frozen=True, slots=True, weakref_slot=True)
class ReadThrough:
    role: MessageRole
    sequence: int
    origin: str


LiveEvent: TypeAlias = MessageStored | DeliveryChanged | StatusChanged | TypingChanged | ReadThrough


def conversation_topic(tenant_id: str, conversation_id: str) -> str:
    return f"conversation/{tenant_id}/{conversation_id}"

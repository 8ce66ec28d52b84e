"""Enumerations of the chat model; values are the seed's plain strings.

These values are what the stores keep and what analytics events carry, so
they must never change once released.
"""

from __future__ import annotations

from enum import StrEnum


class Channel(StrEnum):
    WEB = "web"
    WHATSAPP = "whatsapp"
    MESSENGER = "messenger"
    SLACK = "slack"
    TEAMS = "teams"
    SMS = "sms"
    VOICE = "voice"


class MessageType(StrEnum):
    TEXT = "text"
    IMAGE = "image"
    FILE = "file"
    AUDIO = "audio"
    VIDEO = "video"
    LOCATION = "location"
    QUICK_REPLY = "quick_reply"
    CAROUSEL = "carousel"


class ConversationStatus(StrEnum):
    ACTIVE = "active"
    COMPLETED = "completed"
    ABANDONED = "abandoned"
    ESCALATED = "escalated"
    ERROR = "error"

    @property
    def is_closed(self) -> bool:
        """Closed conversations take no new messages."""
        return self in _CLOSED

    def can_become(self, target: ConversationStatus) -> bool:
        """Whether UpdateConversationStatus may move from self to target."""
        return target == self or target in _TRANSITIONS[self]


_CLOSED = frozenset({ConversationStatus.COMPLETED, ConversationStatus.ABANDONED})
_TRANSITIONS: dict[ConversationStatus, frozenset[ConversationStatus]] = {
    ConversationStatus.ACTIVE: frozenset(
        {
            ConversationStatus.COMPLETED,
            ConversationStatus.ABANDONED,
            ConversationStatus.ESCALATED,
            ConversationStatus.ERROR,
        }
    ),
    ConversationStatus.ESCALATED: frozenset(
        {ConversationStatus.ACTIVE, ConversationStatus.COMPLETED, ConversationStatus.ABANDONED}
    ),
    ConversationStatus.ERROR: frozenset(
        {ConversationStatus.ACTIVE, ConversationStatus.COMPLETED, ConversationStatus.ABANDONED}
    ),
    ConversationStatus.COMPLETED: frozenset(),
    ConversationStatus.ABANDONED: frozenset(),
}


class DeliveryStatus(StrEnum):
    """Delivery only moves forward: PENDING < SENT < DELIVERED < READ; FAILED ends."""

    PENDING = "pending"
    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"
    FAILED = "failed"

    def can_advance_to(self, target: DeliveryStatus) -> bool:
        if self in (DeliveryStatus.FAILED, DeliveryStatus.READ):
            return False
        if target is DeliveryStatus.FAILED:
            return True
        return _DELIVERY_RANK[target] > _DELIVERY_RANK[self]


_DELIVERY_RANK = {
    DeliveryStatus.PENDING: 0,
    DeliveryStatus.SENT: 1,
    DeliveryStatus.DELIVERED: 2,
    DeliveryStatus.READ: 3,
    DeliveryStatus.FAILED: 4,
}


class MessageRole(StrEnum):
    USER = "user"
    BOT = "bot"
    AGENT = "agent"


class Priority(StrEnum):
    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"
    URGENT = "urgent"


class ButtonType(StrEnum):
    POSTBACK = "postback"
    URL = "url"
    PHONE = "phone"
    SHARE = "share"


class SortOrder(StrEnum):
    ASCENDING = "asc"
    DESCENDING = "desc"


class ExportFormat(StrEnum):
    JSON_LINES = "jsonl"
    CSV = "csv"

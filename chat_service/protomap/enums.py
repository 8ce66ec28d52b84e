"""Enum mapping between the protobuf resources and content and the domain.

Proto enums are open: a newer client may send a number this build does not
know. Every `*_from_proto` therefore maps both the UNSPECIFIED zero value
and unknown numbers to None, which the domain validator rejects where a
value is required; `*_to_proto` maps None back to UNSPECIFIED.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Generic, TypeVar

from chatbot.chat.v1 import content_pb2, resources_pb2

from chat_service.domain.enums import (
    ButtonType,
    Channel,
    ConversationStatus,
    DeliveryStatus,
    MessageRole,
    MessageType,
    Priority,
)

_D = TypeVar("_D", bound=Enum)
_P = TypeVar("_P", bound=int)


@dataclass(frozen=True, slots=True)
class EnumMapping(Generic[_D, _P]):
    """A domain enum <-> its proto enum; None <-> the UNSPECIFIED zero value."""

    to_wire: Mapping[_D, _P]
    unspecified: _P
    from_wire: Mapping[int, _D] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "from_wire", {wire: d for d, wire in self.to_wire.items()})

    def to_proto(self, value: _D | None) -> _P:
        return self.unspecified if value is None else self.to_wire[value]

    def from_proto(self, value: int) -> _D | None:
        return self.from_wire.get(value)


_CHANNELS = EnumMapping(
    {
        Channel.WEB: resources_pb2.CHANNEL_WEB,
        Channel.WHATSAPP: resources_pb2.CHANNEL_WHATSAPP,
        Channel.MESSENGER: resources_pb2.CHANNEL_MESSENGER,
        Channel.SLACK: resources_pb2.CHANNEL_SLACK,
        Channel.TEAMS: resources_pb2.CHANNEL_TEAMS,
        Channel.SMS: resources_pb2.CHANNEL_SMS,
        Channel.VOICE: resources_pb2.CHANNEL_VOICE,
    },
    resources_pb2.CHANNEL_UNSPECIFIED,
)

_CONVERSATION_STATUSES = EnumMapping(
    {
        ConversationStatus.ACTIVE: resources_pb2.CONVERSATION_STATUS_ACTIVE,
        ConversationStatus.COMPLETED: resources_pb2.CONVERSATION_STATUS_COMPLETED,
        ConversationStatus.ABANDONED: resources_pb2.CONVERSATION_STATUS_ABANDONED,
        ConversationStatus.ESCALATED: resources_pb2.CONVERSATION_STATUS_ESCALATED,
        ConversationStatus.ERROR: resources_pb2.CONVERSATION_STATUS_ERROR,
    },
    resources_pb2.CONVERSATION_STATUS_UNSPECIFIED,
)

_MESSAGE_ROLES = EnumMapping(
    {
        MessageRole.USER: resources_pb2.MESSAGE_ROLE_USER,
        MessageRole.BOT: resources_pb2.MESSAGE_ROLE_BOT,
        MessageRole.AGENT: resources_pb2.MESSAGE_ROLE_AGENT,
    },
    resources_pb2.MESSAGE_ROLE_UNSPECIFIED,
)

_DELIVERY_STATUSES = EnumMapping(
    {
        DeliveryStatus.PENDING: resources_pb2.DELIVERY_STATUS_PENDING,
        DeliveryStatus.SENT: resources_pb2.DELIVERY_STATUS_SENT,
        DeliveryStatus.DELIVERED: resources_pb2.DELIVERY_STATUS_DELIVERED,
        DeliveryStatus.READ: resources_pb2.DELIVERY_STATUS_READ,
        DeliveryStatus.FAILED: resources_pb2.DELIVERY_STATUS_FAILED,
    },
    resources_pb2.DELIVERY_STATUS_UNSPECIFIED,
)

_PRIORITIES = EnumMapping(
    {
        Priority.LOW: resources_pb2.PRIORITY_LOW,
        Priority.NORMAL: resources_pb2.PRIORITY_NORMAL,
        Priority.HIGH: resources_pb2.PRIORITY_HIGH,
        Priority.URGENT: resources_pb2.PRIORITY_URGENT,
    },
    resources_pb2.PRIORITY_UNSPECIFIED,
)

_MESSAGE_TYPES = EnumMapping(
    {
        MessageType.TEXT: content_pb2.MESSAGE_TYPE_TEXT,
        MessageType.IMAGE: content_pb2.MESSAGE_TYPE_IMAGE,
        MessageType.FILE: content_pb2.MESSAGE_TYPE_FILE,
        MessageType.AUDIO: content_pb2.MESSAGE_TYPE_AUDIO,
        MessageType.VIDEO: content_pb2.MESSAGE_TYPE_VIDEO,
        MessageType.LOCATION: content_pb2.MESSAGE_TYPE_LOCATION,
        MessageType.QUICK_REPLY: content_pb2.MESSAGE_TYPE_QUICK_REPLY,
        MessageType.CAROUSEL: content_pb2.MESSAGE_TYPE_CAROUSEL,
    },
    content_pb2.MESSAGE_TYPE_UNSPECIFIED,
)

_BUTTON_TYPES = EnumMapping(
    {
        ButtonType.POSTBACK: content_pb2.BUTTON_TYPE_POSTBACK,
        ButtonType.URL: content_pb2.BUTTON_TYPE_URL,
        ButtonType.PHONE: content_pb2.BUTTON_TYPE_PHONE,
        ButtonType.SHARE: content_pb2.BUTTON_TYPE_SHARE,
    },
    content_pb2.BUTTON_TYPE_UNSPECIFIED,
)


def channel_from_proto(value: int) -> Channel | None:
    return _CHANNELS.from_proto(value)


def channel_to_proto(value: Channel | None) -> resources_pb2.Channel.ValueType:
    return _CHANNELS.to_proto(value)


def conversation_status_from_proto(value: int) -> ConversationStatus | None:
    return _CONVERSATION_STATUSES.from_proto(value)


def conversation_status_to_proto(
    value: ConversationStatus | None,
) -> resources_pb2.ConversationStatus.ValueType:
    return _CONVERSATION_STATUSES.to_proto(value)


def message_role_from_proto(value: int) -> MessageRole | None:
    return _MESSAGE_ROLES.from_proto(value)


def message_role_to_proto(value: MessageRole | None) -> resources_pb2.MessageRole.ValueType:
    return _MESSAGE_ROLES.to_proto(value)


def delivery_status_from_proto(value: int) -> DeliveryStatus | None:
    return _DELIVERY_STATUSES.from_proto(value)


def delivery_status_to_proto(
    value: DeliveryStatus | None,
) -> resources_pb2.DeliveryStatus.ValueType:
    return _DELIVERY_STATUSES.to_proto(value)


def priority_from_proto(value: int) -> Priority | None:
    return _PRIORITIES.from_proto(value)


def priority_to_proto(value: Priority | None) -> resources_pb2.Priority.ValueType:
    return _PRIORITIES.to_proto(value)


def message_type_from_proto(value: int) -> MessageType | None:
    return _MESSAGE_TYPES.from_proto(value)


def message_type_to_proto(value: MessageType | None) -> content_pb2.MessageType.ValueType:
    return _MESSAGE_TYPES.to_proto(value)


def button_type_from_proto(value: int) -> ButtonType | None:
    return _BUTTON_TYPES.from_proto(value)


def button_type_to_proto(value: ButtonType | None) -> content_pb2.ButtonType.ValueType:
    return _BUTTON_TYPES.to_proto(value)

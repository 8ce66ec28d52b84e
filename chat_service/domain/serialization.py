"""Domain objects <-> JSON-able dicts: the stored shape shared by every store.

Pure functions, no I/O, no store specifics. Enums are kept as their values
and datetimes as ISO-8601 UTC strings with microseconds
(`2026-11-25T08:00:00.123456Z`), so a document reads the same in SQLite's
JSON columns, in MongoDB and in a log line.

Encoding leaves out every field that still has its declared default, so
stored documents stay small; decoding gives absent keys that default again,
which also lets documents written before a field existed load unchanged.
`x_from_dict(x_to_dict(obj)) == obj` for every codec here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from enum import StrEnum
from functools import cache
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

from chat_service.domain.content import (
    Button,
    CarouselCard,
    LocationContent,
    MediaContent,
    MessageContent,
    QuickReply,
)
from chat_service.domain.enums import (
    ButtonType,
    Channel,
    ConversationStatus,
    DeliveryStatus,
    MessageRole,
    MessageType,
    Priority,
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
from chat_service.domain.model import (
    ChannelMetadata,
    Conversation,
    ConversationState,
    IdempotencyRecord,
    Message,
    ProcessingHints,
    SendResult,
)

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

# A JSON object as the codecs produce and accept it. Values are typed Any
# because each decoder checks the shape of what it reads by converting it.
Document: TypeAlias = dict[str, Any]

_E = TypeVar("_E", bound=StrEnum)
_T = TypeVar("_T")

# ------------------------------------------------------------------ datetimes


def format_datetime(value: datetime) -> str:
    """`2026-11-25T08:00:00.123456Z`; the value must be timezone-aware."""
    if value.utcoffset() is None:
        raise ValueError(f"naive datetime {value!r}: store times must be timezone-aware")
    utc = value.astimezone(UTC).replace(tzinfo=None)
    return utc.isoformat(timespec="microseconds") + "Z"


def parse_datetime(text: str) -> datetime:
    """The timezone-aware UTC datetime of an ISO-8601 string with an offset."""
    value = datetime.fromisoformat(text)
    if value.utcoffset() is None:
        raise ValueError(f"datetime {text!r} has no UTC offset")
    return value.astimezone(UTC)


# -------------------------------------------------------------------- content


def content_to_dict(content: MessageContent) -> Document:
    return _without_defaults(
        content,
        {
            "type": _enum_value(content.type),
            "text": content.text,
            "language": content.language,
            "media": None if content.media is None else _media_to_dict(content.media),
            "location": None if content.location is None else _location_to_dict(content.location),
            "quick_replies": [_quick_reply_to_dict(reply) for reply in content.quick_replies],
            "buttons": [_button_to_dict(button) for button in content.buttons],
            "cards": [_card_to_dict(card) for card in content.cards],
        },
    )


def content_from_dict(data: Mapping[str, Any]) -> MessageContent:
    return MessageContent(
        type=_optional_enum(MessageType, data.get("type")),
        **_present(
            data,
            text=str,
            language=str,
            media=_optional(_media_from_dict),
            location=_optional(_location_from_dict),
            quick_replies=_tuple_of(_quick_reply_from_dict),
            buttons=_tuple_of(_button_from_dict),
            cards=_tuple_of(_card_from_dict),
        ),
    )


def _media_to_dict(media: MediaContent) -> Document:
    return _without_defaults(
        media,
        {
            "url": media.url,
            "type": media.type,
            "size_bytes": media.size_bytes,
            "alt_text": media.alt_text,
            "thumbnail_url": media.thumbnail_url,
        },
    )


def _media_from_dict(data: Mapping[str, Any]) -> MediaContent:
    return MediaContent(
        url=str(data["url"]),
        type=str(data["type"]),
        **_present(data, size_bytes=int, alt_text=str, thumbnail_url=str),
    )


def _location_to_dict(location: LocationContent) -> Document:
    return _without_defaults(
        location,
        {
            "latitude": location.latitude,
            "longitude": location.longitude,
            "accuracy_meters": location.accuracy_meters,
            "address": location.address,
        },
    )


def _location_from_dict(data: Mapping[str, Any]) -> LocationContent:
    return LocationContent(
        latitude=float(data["latitude"]),
        longitude=float(data["longitude"]),
        **_present(data, accuracy_meters=_optional(int), address=str),
    )


def _quick_reply_to_dict(reply: QuickReply) -> Document:
    return _without_defaults(
        reply,
        {"title": reply.title, "payload": reply.payload, "content_type": reply.content_type},
    )


def _quick_reply_from_dict(data: Mapping[str, Any]) -> QuickReply:
    return QuickReply(
        title=str(data["title"]),
        payload=str(data["payload"]),
        **_present(data, content_type=str),
    )


def _button_to_dict(button: Button) -> Document:
    return _without_defaults(
        button,
        {
            "type": _enum_value(button.type),
            "title": button.title,
            "payload": button.payload,
            "url": button.url,
        },
    )


def _button_from_dict(data: Mapping[str, Any]) -> Button:
    return Button(
        type=_optional_enum(ButtonType, data.get("type")),
        title=str(data["title"]),
        **_present(data, payload=str, url=str),
    )


def _card_to_dict(card: CarouselCard) -> Document:
    return _without_defaults(
        card,
        {
            "title": card.title,
            "subtitle": card.subtitle,
            "image_url": card.image_url,
            "buttons": [_button_to_dict(button) for button in card.buttons],
        },
    )


def _card_from_dict(data: Mapping[str, Any]) -> CarouselCard:
    return CarouselCard(
        title=str(data["title"]),
        **_present(data, subtitle=str, image_url=str, buttons=_tuple_of(_button_from_dict)),
    )


# ------------------------------------------------------- metadata, hints, state


def channel_metadata_to_dict(metadata: ChannelMetadata) -> Document:
    return _without_defaults(
        metadata,
        {
            "platform_message_id": metadata.platform_message_id,
            "platform_user_id": metadata.platform_user_id,
            "thread_id": metadata.thread_id,
            "workspace_id": metadata.workspace_id,
            "additional_data": dict(metadata.additional_data),
        },
    )


def channel_metadata_from_dict(data: Mapping[str, Any]) -> ChannelMetadata:
    return ChannelMetadata(
        **_present(
            data,
            platform_message_id=str,
            platform_user_id=str,
            thread_id=str,
            workspace_id=str,
            additional_data=dict,
        )
    )


def processing_hints_to_dict(hints: ProcessingHints) -> Document:
    return _without_defaults(
        hints,
        {
            "priority": hints.priority.value,
            "expected_response_type": _enum_value(hints.expected_response_type),
            "bypass_automation": hints.bypass_automation,
            "require_human_review": hints.require_human_review,
        },
    )


def processing_hints_from_dict(data: Mapping[str, Any]) -> ProcessingHints:
    return ProcessingHints(
        **_present(
            data,
            priority=Priority,
            expected_response_type=_optional(MessageType),
            bypass_automation=bool,
            require_human_review=bool,
        )
    )


def conversation_state_to_dict(state: ConversationState) -> Document:
    return _without_defaults(
        state,
        {
            "current_intent": state.current_intent,
            "entities": dict(state.entities),
            "slots": dict(state.slots),
            "user_profile": dict(state.user_profile),
            "conversation_stage": state.conversation_stage,
        },
    )


def conversation_state_from_dict(data: Mapping[str, Any]) -> ConversationState:
    return ConversationState(
        **_present(
            data,
            current_intent=str,
            entities=dict,
            slots=dict,
            user_profile=dict,
            conversation_stage=str,
        )
    )


# ------------------------------------------------------ conversations, messages


def conversation_to_dict(conversation: Conversation) -> Document:
    return _without_defaults(
        conversation,
        {
            "conversation_id": conversation.conversation_id,
            "tenant_id": conversation.tenant_id,
            "user_id": conversation.user_id,
            "channel": conversation.channel.value,
            "status": conversation.status.value,
            "created_at": format_datetime(conversation.created_at),
            "updated_at": format_datetime(conversation.updated_at),
            "last_sequence": conversation.last_sequence,
            "version": conversation.version,
            "session_id": conversation.session_id,
            "state": conversation_state_to_dict(conversation.state),
            "channel_metadata": channel_metadata_to_dict(conversation.channel_metadata),
            "status_reason": conversation.status_reason,
        },
    )


def conversation_from_dict(data: Mapping[str, Any]) -> Conversation:
    return Conversation(
        conversation_id=str(data["conversation_id"]),
        tenant_id=str(data["tenant_id"]),
        user_id=str(data["user_id"]),
        channel=Channel(data["channel"]),
        status=ConversationStatus(data["status"]),
        created_at=parse_datetime(data["created_at"]),
        updated_at=parse_datetime(data["updated_at"]),
        **_present(
            data,
            last_sequence=int,
            version=int,
            session_id=str,
            state=conversation_state_from_dict,
            channel_metadata=channel_metadata_from_dict,
            status_reason=str,
        ),
    )


def message_to_dict(message: Message) -> Document:
    return _without_defaults(
        message,
        {
            "message_id": message.message_id,
            "tenant_id": message.tenant_id,
            "conversation_id": message.conversation_id,
            "sequence": message.sequence,
            "role": message.role.value,
            "channel": message.channel.value,
            "user_id": message.user_id,
            "content": content_to_dict(message.content),
            "created_at": format_datetime(message.created_at),
            "delivery_status": message.delivery_status.value,
            "client_time": None
            if message.client_time is None
            else format_datetime(message.client_time),
            "channel_metadata": channel_metadata_to_dict(message.channel_metadata),
            "reply_to_message_id": message.reply_to_message_id,
            "fingerprint": message.fingerprint,
        },
    )


def message_from_dict(data: Mapping[str, Any]) -> Message:
    return Message(
        message_id=str(data["message_id"]),
        tenant_id=str(data["tenant_id"]),
        conversation_id=str(data["conversation_id"]),
        sequence=int(data["sequence"]),
        role=MessageRole(data["role"]),
        channel=Channel(data["channel"]),
        user_id=str(data["user_id"]),
        content=content_from_dict(data["content"]),
        created_at=parse_datetime(data["created_at"]),
        delivery_status=DeliveryStatus(data["delivery_status"]),
        **_present(
            data,
            client_time=_optional(parse_datetime),
            channel_metadata=channel_metadata_from_dict,
            reply_to_message_id=str,
            fingerprint=str,
        ),
    )


# ---------------------------------------------------------- results, records


def send_result_to_dict(result: SendResult) -> Document:
    return _without_defaults(
        result,
        {
            "message_id": result.message_id,
            "conversation_id": result.conversation_id,
            "sequence": result.sequence,
            "state": conversation_state_to_dict(result.state),
            "replies": [message_to_dict(reply) for reply in result.replies],
            "response": None if result.response is None else content_to_dict(result.response),
            "engine": result.engine,
            "engine_latency_ms": result.engine_latency_ms,
            "fallback_used": result.fallback_used,
            "fallback_reason": result.fallback_reason,
            "confidence_scores": dict(result.confidence_scores),
        },
    )


def send_result_from_dict(data: Mapping[str, Any]) -> SendResult:
    return SendResult(
        message_id=str(data["message_id"]),
        conversation_id=str(data["conversation_id"]),
        sequence=int(data["sequence"]),
        state=conversation_state_from_dict(data.get("state", {})),
        **_present(
            data,
            replies=_tuple_of(message_from_dict),
            response=_optional(content_from_dict),
            engine=str,
            engine_latency_ms=float,
            fallback_used=bool,
            fallback_reason=str,
            confidence_scores=_float_map,
        ),
    )


def idempotency_record_to_dict(record: IdempotencyRecord) -> Document:
    return {
        "tenant_id": record.tenant_id,
        "message_id": record.message_id,
        "fingerprint": record.fingerprint,
        "result": send_result_to_dict(record.result),
        "created_at": format_datetime(record.created_at),
    }


def idempotency_record_from_dict(data: Mapping[str, Any]) -> IdempotencyRecord:
    return IdempotencyRecord(
        tenant_id=str(data["tenant_id"]),
        message_id=str(data["message_id"]),
        fingerprint=str(data["fingerprint"]),
        result=send_result_from_dict(data["result"]),
        created_at=parse_datetime(data["created_at"]),
    )


# --------------------------------------------------------------------- events


def event_to_dict(event: DomainEvent) -> Document:
    return _without_defaults(
        event,
        {
            "event_id": event.event_id,
            "event_type": event.event_type.value,
            "tenant_id": event.tenant_id,
            "conversation_id": event.conversation_id,
            "occurred_at": format_datetime(event.occurred_at),
            "channel": event.channel.value,
            "user_id": event.user_id,
            "message_type": _enum_value(event.message_type),
            "message_id": event.message_id,
            "sequence": event.sequence,
            "metadata": dict(event.metadata),
            "conversation_status": _enum_value(event.conversation_status),
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
        **_present(
            data,
            message_type=_optional(MessageType),
            message_id=str,
            sequence=int,
            metadata=dict,
            conversation_status=_optional(ConversationStatus),
        ),
    )


# ---------------------------------------------------------------- live events


def live_event_to_dict(event: LiveEvent) -> Document:
    """A live event with its `kind`, the key its decoder dispatches on."""
    match event:
        case MessageStored(message=message):
            return {"kind": "message_stored", "message": message_to_dict(message)}
        case DeliveryChanged(message_id=message_id, sequence=sequence, status=status):
            return {
                "kind": "delivery_changed",
                "message_id": message_id,
                "sequence": sequence,
                "status": status.value,
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


# -------------------------------------------------------------------- helpers


def _without_defaults(obj: DataclassInstance, encoded: Document) -> Document:
    """`encoded` minus the keys whose field in `obj` still has its default."""
    defaults = _declared_defaults(type(obj))
    return {
        key: value
        for key, value in encoded.items()
        if key not in defaults or getattr(obj, key) != defaults[key]
    }


@cache
def _declared_defaults(cls: type[DataclassInstance]) -> Mapping[str, object]:
    defaults: dict[str, object] = {}
    for field in dataclasses.fields(cls):
        if field.default is not dataclasses.MISSING:
            defaults[field.name] = field.default
        elif field.default_factory is not dataclasses.MISSING:
            defaults[field.name] = field.default_factory()
    return defaults


def _present(data: Mapping[str, Any], **decoders: Callable[[Any], object]) -> dict[str, Any]:
    """Constructor arguments for the keys present in `data`, each decoded;
    an absent key is left out, so the dataclass default applies."""
    return {key: decode(data[key]) for key, decode in decoders.items() if key in data}


def _enum_value(member: StrEnum | None) -> str | None:
    return None if member is None else member.value


def _optional_enum(enum: type[_E], value: str | None) -> _E | None:
    return None if value is None else enum(value)


def _optional(decode: Callable[[Any], _T]) -> Callable[[Any], _T | None]:
    return lambda value: None if value is None else decode(value)


def _tuple_of(decode: Callable[[Any], _T]) -> Callable[[Any], tuple[_T, ...]]:
    return lambda values: tuple(decode(value) for value in values)


def _float_map(data: Mapping[str, Any]) -> dict[str, float]:
    return {str(key): float(value) for key, value in data.items()}

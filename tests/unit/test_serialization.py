"""The stored shape of domain objects: exact round trips, small documents,
tolerant decoding."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from chat_service.domain import content_codec, conversation_codec, event_codec, serialization
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
)
from chat_service.domain.events import DomainEvent, EventType
from chat_service.domain.live import (
    DeliveryChanged,
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
    SendResult,
)
from tests.builders import T0, make_conversation, make_event, make_message, make_record

FULL_CONTENT = MessageContent(
    type=MessageType.CAROUSEL,
    text="Pick one",
    language="",  # differs from the default "en", so it must be kept
    media=MediaContent(
        url="https://cdn.example/a.png",
        type="image/png",
        size_bytes=2048,
        alt_text="a",
        thumbnail_url="https://cdn.example/a-small.png",
    ),
    location=LocationContent(latitude=52.520008, longitude=13.404954, accuracy_meters=0),
    quick_replies=(QuickReply("Yes", "YES"), QuickReply("Where?", "LOC", "location")),
    buttons=(Button(ButtonType.URL, "Open", url="https://example.com"),),
    cards=(
        CarouselCard(
            "Card",
            subtitle="sub",
            image_url="https://cdn.example/c.png",
            buttons=(Button(ButtonType.POSTBACK, "Buy", payload="BUY"), Button(None, "?")),
        ),
        CarouselCard("Bare"),
    ),
)

FULL_METADATA = ChannelMetadata(
    platform_message_id="wamid.1",
    platform_user_id="+4915100000",
    thread_id="t-1",
    workspace_id="w-1",
    additional_data={"nested": {"list": [1, 2.5, "x", None, True]}},
)

FULL_STATE = ConversationState(
    current_intent="book",
    entities={"city": "Berlin"},
    slots={"date": "2026-12-01", "guests": 2},
    user_profile={"vip": True},
    conversation_stage="confirm",
)


def through_json(document: dict[str, Any]) -> dict[str, Any]:
    """What a store hands back: the document after JSON text and back."""
    decoded: dict[str, Any] = json.loads(json.dumps(document))
    return decoded


ROUND_TRIPS: list[tuple[str, Callable[[Any], dict[str, Any]], Callable[[Any], Any], object]] = [
    ("content: full", content_codec.content_to_dict, content_codec.content_from_dict, FULL_CONTENT),
    (
        "content: unspecified type",
        content_codec.content_to_dict,
        content_codec.content_from_dict,
        MessageContent(None),
    ),
    (
        "channel metadata",
        conversation_codec.channel_metadata_to_dict,
        conversation_codec.channel_metadata_from_dict,
        FULL_METADATA,
    ),
    (
        "state",
        conversation_codec.conversation_state_to_dict,
        conversation_codec.conversation_state_from_dict,
        FULL_STATE,
    ),
    (
        "conversation: full",
        conversation_codec.conversation_to_dict,
        conversation_codec.conversation_from_dict,
        make_conversation(
            status=ConversationStatus.ESCALATED,
            channel=Channel.WHATSAPP,
            last_sequence=7,
            version=4,
            session_id="s-1",
            state=FULL_STATE,
            channel_metadata=FULL_METADATA,
            status_reason="asked for a human",
        ),
    ),
    (
        "message: full",
        conversation_codec.message_to_dict,
        conversation_codec.message_from_dict,
        make_message(
            make_conversation(),
            3,
            role=MessageRole.BOT,
            content=FULL_CONTENT,
            delivery_status=DeliveryStatus.DELIVERED,
            client_time=datetime(2026, 11, 25, 9, 0, 0, 1, tzinfo=UTC),
            channel_metadata=FULL_METADATA,
            reply_to_message_id="msg-0",
            fingerprint="sha256:ff",
        ),
    ),
    (
        "message: plain",
        conversation_codec.message_to_dict,
        conversation_codec.message_from_dict,
        make_message(make_conversation(), 1),
    ),
    (
        "send result: with replies",
        conversation_codec.send_result_to_dict,
        conversation_codec.send_result_from_dict,
        SendResult(
            message_id="m-1",
            conversation_id="c-1",
            sequence=1,
            state=FULL_STATE,
            replies=(make_message(make_conversation(), 2, content=FULL_CONTENT),),
            response=FULL_CONTENT,
            engine="mcp",
            engine_latency_ms=0.1 + 0.2,  # not exactly 0.3: floats must survive bit for bit
            fallback_used=True,
            fallback_reason="timeout",
            confidence_scores={"book": 0.75, "cancel": 1e-9},
        ),
    ),
    (
        "send result: bare",
        conversation_codec.send_result_to_dict,
        conversation_codec.send_result_from_dict,
        SendResult("m-1", "c-1", 1, ConversationState()),
    ),
    (
        "idempotency record",
        conversation_codec.idempotency_record_to_dict,
        conversation_codec.idempotency_record_from_dict,
        make_record(make_message(make_conversation(), 1), make_message(make_conversation(), 2)),
    ),
    (
        "event: full",
        event_codec.event_to_dict,
        event_codec.event_from_dict,
        make_event(
            make_conversation(),
            EventType.MESSAGE_SENT,
            make_message(make_conversation(), 5),
            metadata={"latency_ms": 12.5, "tags": ["a", "b"]},
        ),
    ),
    (
        "event: bare",
        event_codec.event_to_dict,
        event_codec.event_from_dict,
        make_event(make_conversation(), EventType.CONVERSATION_STARTED),
    ),
    *(
        (
            f"live event: {type(event).__name__}",
            event_codec.live_event_to_dict,
            event_codec.live_event_from_dict,
            event,
        )
        for event in (
            MessageStored(make_message(make_conversation(), 4, content=FULL_CONTENT)),
            DeliveryChanged("m-1", 4, DeliveryStatus.READ),
            DeliveryChanged("m-2", 5, DeliveryStatus.SENT, "wamid.HBgL="),
            StatusChanged(ConversationStatus.ACTIVE, ConversationStatus.ESCALATED, "human"),
            TypingChanged(MessageRole.AGENT, True, "stream-1"),
            ReadThrough(MessageRole.USER, 4, "stream-2"),
        )
    ),
]


@pytest.mark.parametrize(
    ("encode", "decode", "value"),
    [pytest.param(*case[1:], id=case[0]) for case in ROUND_TRIPS],
)
def test_round_trip_is_exact(
    encode: Callable[[Any], dict[str, Any]], decode: Callable[[Any], Any], value: object
) -> None:
    document = encode(value)

    assert decode(document) == value
    assert decode(through_json(document)) == value


# ---------------------------------------------------------------- datetimes


def test_datetimes_are_utc_strings_with_microseconds() -> None:
    assert serialization.format_datetime(T0) == "2026-11-25T08:00:00.123456Z"
    assert serialization.format_datetime(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)) == (
        "2026-01-02T03:04:05.000000Z"
    )


def test_other_offsets_are_stored_as_the_same_instant_in_utc() -> None:
    berlin = datetime(2026, 11, 25, 9, 0, 0, 123456, tzinfo=timezone(timedelta(hours=1)))

    text = serialization.format_datetime(berlin)

    assert text == "2026-11-25T08:00:00.123456Z"
    assert serialization.parse_datetime(text) == berlin


def test_parsed_datetimes_are_aware_utc() -> None:
    parsed = serialization.parse_datetime("2026-11-25T10:00:00.123456+02:00")

    assert parsed == T0
    assert parsed.tzinfo is UTC


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        serialization.format_datetime(datetime(2026, 11, 25, 8, 0))
    with pytest.raises(ValueError, match="offset"):
        serialization.parse_datetime("2026-11-25T08:00:00")


# ----------------------------------------------------------- compact encoding


def test_defaults_are_left_out() -> None:
    assert content_codec.content_to_dict(MessageContent.of_text("hi")) == {
        "type": "text",
        "text": "hi",
    }
    assert conversation_codec.channel_metadata_to_dict(ChannelMetadata()) == {}
    assert conversation_codec.conversation_state_to_dict(ConversationState()) == {}


def test_non_default_falsy_values_are_kept() -> None:
    location = MessageContent(
        MessageType.LOCATION, language="", location=LocationContent(0.0, 0.0, accuracy_meters=0)
    )

    assert content_codec.content_to_dict(location) == {
        "type": "location",
        "language": "",
        "location": {"latitude": 0.0, "longitude": 0.0, "accuracy_meters": 0},
    }


def test_enums_are_stored_as_their_values() -> None:
    message = make_message(make_conversation(channel=Channel.SMS), 1, role=MessageRole.AGENT)

    document = conversation_codec.message_to_dict(message)

    assert (document["role"], document["channel"], document["delivery_status"]) == (
        "agent",
        "sms",
        "pending",
    )
    assert document["content"] == {"type": "text", "text": "hello"}
    assert document["created_at"] == "2026-11-25T08:00:01.123456Z"


# ---------------------------------------------------------- tolerant decoding


def test_missing_optional_keys_decode_to_defaults() -> None:
    message = conversation_codec.message_from_dict(
        {
            "message_id": "m-1",
            "tenant_id": "t",
            "conversation_id": "c",
            "sequence": 1,
            "role": "user",
            "channel": "web",
            "user_id": "u",
            "content": {},
            "created_at": "2026-11-25T08:00:00.123456Z",
            "delivery_status": "sent",
        }
    )

    assert message.content == MessageContent(None)
    assert message.channel_metadata == ChannelMetadata()
    assert (message.client_time, message.reply_to_message_id, message.fingerprint) == (
        None,
        "",
        "",
    )


def test_unknown_keys_are_ignored() -> None:
    document = content_codec.content_to_dict(MessageContent.of_text("hi")) | {"added_later": 1}

    assert content_codec.content_from_dict(document) == MessageContent.of_text("hi")


# ------------------------------------------------------- documents on disk
#
# Documents exactly as the codecs wrote them when these tests were added, one
# per stored type and one message per content kind. Stores keep documents for
# years: whatever replaces the hand-written codecs (issue 13: msgspec) must
# still read every one of these to the same object. Never edit a document
# here to make a change pass; add the new shape beside it instead.

_CONVERSATION_ID = "3f1c9a52-7d1e-4a8b-9c0d-5e6f7a8b9c0d"
_CREATED = datetime(2026, 11, 25, 8, 0, 0, 123456, tzinfo=UTC)
_LATER = datetime(2026, 11, 25, 8, 5, 30, tzinfo=UTC)

STORED_CONVERSATION = {
    "conversation_id": _CONVERSATION_ID,
    "tenant_id": "tenant-a",
    "user_id": "user-1",
    "channel": "whatsapp",
    "status": "escalated",
    "created_at": "2026-11-25T08:00:00.123456Z",
    "updated_at": "2026-11-25T08:05:30.000000Z",
    "last_sequence": 9,
    "version": 10,
    "session_id": "s-1",
    "state": {
        "current_intent": "book",
        "entities": {"city": "Berlin"},
        "slots": {"guests": 2},
        "user_profile": {"vip": True},
        "conversation_stage": "confirm",
    },
    "channel_metadata": {
        "platform_user_id": "+4915100000",
        "additional_data": {"wa_id": "4915100000"},
    },
    "status_reason": "asked for a human",
}
CONVERSATION = Conversation(
    conversation_id=_CONVERSATION_ID,
    tenant_id="tenant-a",
    user_id="user-1",
    channel=Channel.WHATSAPP,
    status=ConversationStatus.ESCALATED,
    created_at=_CREATED,
    updated_at=_LATER,
    last_sequence=9,
    version=10,
    session_id="s-1",
    state=ConversationState(
        current_intent="book",
        entities={"city": "Berlin"},
        slots={"guests": 2},
        user_profile={"vip": True},
        conversation_stage="confirm",
    ),
    channel_metadata=ChannelMetadata(
        platform_user_id="+4915100000", additional_data={"wa_id": "4915100000"}
    ),
    status_reason="asked for a human",
)

# Every stored message of the conversation carries these keys as written.
_BOT_MESSAGE_KEYS = {
    "tenant_id": "tenant-a",
    "conversation_id": _CONVERSATION_ID,
    "role": "bot",
    "channel": "whatsapp",
    "user_id": "user-1",
    "created_at": "2026-11-25T08:05:30.000000Z",
    "delivery_status": "delivered",
}


def _bot_message(sequence: int, content: MessageContent, **fields: Any) -> Message:
    header: dict[str, Any] = {
        "message_id": f"msg-{sequence}",
        "tenant_id": "tenant-a",
        "conversation_id": _CONVERSATION_ID,
        "sequence": sequence,
        "role": MessageRole.BOT,
        "channel": Channel.WHATSAPP,
        "user_id": "user-1",
        "content": content,
        "created_at": _LATER,
        "delivery_status": DeliveryStatus.DELIVERED,
    }
    return Message(**(header | fields))


STORED_IMAGE_MESSAGE = _BOT_MESSAGE_KEYS | {
    "message_id": "msg-2",
    "sequence": 2,
    "content": {
        "type": "image",
        "text": "Our menu",
        "media": {
            "url": "https://cdn.example/menu.png",
            "type": "image/png",
            "size_bytes": 2048,
            "alt_text": "menu",
            "thumbnail_url": "https://cdn.example/menu-small.png",
        },
    },
    "reply_to_message_id": "msg-1",
}
IMAGE_MESSAGE = _bot_message(
    2,
    MessageContent(
        MessageType.IMAGE,
        text="Our menu",
        media=MediaContent(
            "https://cdn.example/menu.png",
            "image/png",
            size_bytes=2048,
            alt_text="menu",
            thumbnail_url="https://cdn.example/menu-small.png",
        ),
    ),
    reply_to_message_id="msg-1",
)

STORED_MESSAGES: list[tuple[str, dict[str, Any], Message]] = [
    (
        "text",
        {
            "message_id": "msg-1",
            "tenant_id": "tenant-a",
            "conversation_id": _CONVERSATION_ID,
            "sequence": 1,
            "role": "user",
            "channel": "whatsapp",
            "user_id": "user-1",
            "content": {"type": "text", "text": "Hallo", "language": "de"},
            "created_at": "2026-11-25T08:05:30.000000Z",
            "delivery_status": "sent",
            "client_time": "2026-11-25T07:59:59.000000Z",
            "channel_metadata": {
                "platform_message_id": "wamid.1",
                "thread_id": "t-1",
                "workspace_id": "w-1",
            },
            "fingerprint": "9f86d081884c7d65",
        },
        _bot_message(
            1,
            MessageContent.of_text("Hallo", language="de"),
            role=MessageRole.USER,
            delivery_status=DeliveryStatus.SENT,
            client_time=datetime(2026, 11, 25, 7, 59, 59, tzinfo=UTC),
            channel_metadata=ChannelMetadata(
                platform_message_id="wamid.1", thread_id="t-1", workspace_id="w-1"
            ),
            fingerprint="9f86d081884c7d65",
        ),
    ),
    ("image", STORED_IMAGE_MESSAGE, IMAGE_MESSAGE),
    (
        "file",
        _BOT_MESSAGE_KEYS
        | {
            "message_id": "msg-3",
            "sequence": 3,
            "content": {
                "type": "file",
                "media": {"url": "https://cdn.example/terms.pdf", "type": "application/pdf"},
            },
        },
        _bot_message(
            3,
            MessageContent(
                MessageType.FILE,
                media=MediaContent("https://cdn.example/terms.pdf", "application/pdf"),
            ),
        ),
    ),
    (
        "audio",
        _BOT_MESSAGE_KEYS
        | {
            "message_id": "msg-4",
            "sequence": 4,
            "role": "user",
            "content": {
                "type": "audio",
                "media": {
                    "url": "https://cdn.example/hi.mp3",
                    "type": "audio/mpeg",
                    "size_bytes": 1,
                },
            },
            "delivery_status": "read",
        },
        _bot_message(
            4,
            MessageContent(
                MessageType.AUDIO,
                media=MediaContent("https://cdn.example/hi.mp3", "audio/mpeg", size_bytes=1),
            ),
            role=MessageRole.USER,
            delivery_status=DeliveryStatus.READ,
        ),
    ),
    (
        "video",
        _BOT_MESSAGE_KEYS
        | {
            "message_id": "msg-5",
            "sequence": 5,
            "content": {
                "type": "video",
                "media": {
                    "url": "https://cdn.example/tour.mp4",
                    "type": "video/mp4",
                    "alt_text": "tour",
                },
            },
            "delivery_status": "failed",
        },
        _bot_message(
            5,
            MessageContent(
                MessageType.VIDEO,
                media=MediaContent("https://cdn.example/tour.mp4", "video/mp4", alt_text="tour"),
            ),
            delivery_status=DeliveryStatus.FAILED,
        ),
    ),
    (
        "location",
        _BOT_MESSAGE_KEYS
        | {
            "message_id": "msg-6",
            "sequence": 6,
            "content": {
                "type": "location",
                "location": {
                    "latitude": 52.520008,
                    "longitude": 13.404954,
                    "accuracy_meters": 0,
                    "address": "Berlin",
                },
            },
        },
        _bot_message(
            6,
            MessageContent(
                MessageType.LOCATION,
                location=LocationContent(52.520008, 13.404954, accuracy_meters=0, address="Berlin"),
            ),
        ),
    ),
    (
        "quick replies",
        _BOT_MESSAGE_KEYS
        | {
            "message_id": "msg-7",
            "sequence": 7,
            "content": {
                "type": "quick_reply",
                "text": "Where to?",
                "quick_replies": [
                    {"title": "Here", "payload": "HERE", "content_type": "location"},
                    {"title": "Mail me", "payload": "MAIL", "content_type": "user_email"},
                ],
            },
        },
        _bot_message(
            7,
            MessageContent(
                MessageType.QUICK_REPLY,
                text="Where to?",
                quick_replies=(
                    QuickReply("Here", "HERE", "location"),
                    QuickReply("Mail me", "MAIL", "user_email"),
                ),
            ),
        ),
    ),
    (
        "buttons",
        _BOT_MESSAGE_KEYS
        | {
            "message_id": "msg-8",
            "sequence": 8,
            "role": "agent",
            "content": {
                "type": "text",
                "text": "Need help?",
                "buttons": [
                    {"type": "url", "title": "Help", "url": "https://example.com/help"},
                    {"type": "postback", "title": "Agent", "payload": "AGENT"},
                    {"type": "phone", "title": "Call", "payload": "+14155550123"},
                ],
            },
            "delivery_status": "pending",
        },
        _bot_message(
            8,
            MessageContent(
                MessageType.TEXT,
                text="Need help?",
                buttons=(
                    Button(ButtonType.URL, "Help", url="https://example.com/help"),
                    Button(ButtonType.POSTBACK, "Agent", payload="AGENT"),
                    Button(ButtonType.PHONE, "Call", payload="+14155550123"),
                ),
            ),
            role=MessageRole.AGENT,
            delivery_status=DeliveryStatus.PENDING,
        ),
    ),
    (
        "carousel",
        _BOT_MESSAGE_KEYS
        | {
            "message_id": "msg-9",
            "sequence": 9,
            "content": {
                "type": "carousel",
                "text": "Pick a room",
                "cards": [
                    {
                        "title": "Single",
                        "subtitle": "1 bed",
                        "image_url": "https://cdn.example/s.png",
                        "buttons": [
                            {"type": "postback", "title": "Book", "payload": "BOOK_S"},
                            {"type": "share", "title": "Share"},
                        ],
                    },
                    {"title": "Double"},
                ],
            },
        },
        _bot_message(
            9,
            MessageContent(
                MessageType.CAROUSEL,
                text="Pick a room",
                cards=(
                    CarouselCard(
                        "Single",
                        subtitle="1 bed",
                        image_url="https://cdn.example/s.png",
                        buttons=(
                            Button(ButtonType.POSTBACK, "Book", payload="BOOK_S"),
                            Button(ButtonType.SHARE, "Share"),
                        ),
                    ),
                    CarouselCard("Double"),
                ),
            ),
        ),
    ),
]

STORED_EVENTS: list[tuple[str, dict[str, Any], DomainEvent]] = [
    (
        "message received",
        {
            "event_id": "evt-1",
            "event_type": "message.received",
            "tenant_id": "tenant-a",
            "conversation_id": _CONVERSATION_ID,
            "occurred_at": "2026-11-25T08:05:30.000000Z",
            "channel": "whatsapp",
            "user_id": "user-1",
            "message_type": "text",
            "message_id": "msg-1",
            "sequence": 1,
            "metadata": {"latency_ms": 12.5, "tags": ["a", "b"]},
            "conversation_status": "active",
        },
        DomainEvent(
            event_id="evt-1",
            event_type=EventType.MESSAGE_RECEIVED,
            tenant_id="tenant-a",
            conversation_id=_CONVERSATION_ID,
            occurred_at=_LATER,
            channel=Channel.WHATSAPP,
            user_id="user-1",
            message_type=MessageType.TEXT,
            message_id="msg-1",
            sequence=1,
            metadata={"latency_ms": 12.5, "tags": ["a", "b"]},
            conversation_status=ConversationStatus.ACTIVE,
        ),
    ),
    (
        "conversation started",
        {
            "event_id": "evt-0",
            "event_type": "conversation.started",
            "tenant_id": "tenant-a",
            "conversation_id": _CONVERSATION_ID,
            "occurred_at": "2026-11-25T08:00:00.123456Z",
            "channel": "whatsapp",
            "user_id": "user-1",
        },
        DomainEvent(
            event_id="evt-0",
            event_type=EventType.CONVERSATION_STARTED,
            tenant_id="tenant-a",
            conversation_id=_CONVERSATION_ID,
            occurred_at=_CREATED,
            channel=Channel.WHATSAPP,
            user_id="user-1",
        ),
    ),
]

STORED_RECORD = {
    "tenant_id": "tenant-a",
    "message_id": "msg-1",
    "fingerprint": "9f86d081884c7d65",
    "result": {
        "message_id": "msg-1",
        "conversation_id": _CONVERSATION_ID,
        "sequence": 1,
        "state": {"current_intent": "greet"},
        "replies": [STORED_IMAGE_MESSAGE],
        "response": STORED_IMAGE_MESSAGE["content"],
        "engine": "mcp",
        "engine_latency_ms": 12.5,
        "fallback_used": True,
        "fallback_reason": "timeout",
        "confidence_scores": {"greet": 0.93},
    },
    "created_at": "2026-11-25T08:05:30.000000Z",
}
RECORD = IdempotencyRecord(
    tenant_id="tenant-a",
    message_id="msg-1",
    fingerprint="9f86d081884c7d65",
    result=SendResult(
        message_id="msg-1",
        conversation_id=_CONVERSATION_ID,
        sequence=1,
        state=ConversationState(current_intent="greet"),
        replies=(IMAGE_MESSAGE,),
        response=IMAGE_MESSAGE.content,
        engine="mcp",
        engine_latency_ms=12.5,
        fallback_used=True,
        fallback_reason="timeout",
        confidence_scores={"greet": 0.93},
    ),
    created_at=_LATER,
)

STORED_DOCUMENTS = [
    (
        "conversation",
        conversation_codec.conversation_to_dict,
        conversation_codec.conversation_from_dict,
        STORED_CONVERSATION,
        CONVERSATION,
    ),
    *(
        (
            f"message: {kind}",
            conversation_codec.message_to_dict,
            conversation_codec.message_from_dict,
            stored,
            message,
        )
        for kind, stored, message in STORED_MESSAGES
    ),
    *(
        (
            f"outbox event: {kind}",
            event_codec.event_to_dict,
            event_codec.event_from_dict,
            stored,
            event,
        )
        for kind, stored, event in STORED_EVENTS
    ),
    (
        "idempotency record",
        conversation_codec.idempotency_record_to_dict,
        conversation_codec.idempotency_record_from_dict,
        STORED_RECORD,
        RECORD,
    ),
]


@pytest.mark.parametrize(
    ("decode", "document", "value"),
    [
        pytest.param(decode, document, value, id=name)
        for name, _, decode, document, value in STORED_DOCUMENTS
    ],
)
def test_stored_documents_still_read(
    decode: Callable[[Any], Any], document: dict[str, Any], value: object
) -> None:
    assert decode(document) == value


@pytest.mark.parametrize(
    ("encode", "document", "value"),
    [
        pytest.param(encode, document, value, id=name)
        for name, encode, _, document, value in STORED_DOCUMENTS
    ],
)
def test_stored_documents_are_what_the_codecs_write(
    encode: Callable[[Any], dict[str, Any]], document: dict[str, Any], value: object
) -> None:
    """Pins the fixtures above to today's writer. A deliberate change of the
    stored shape changes this test, never test_stored_documents_still_read."""
    assert encode(value) == document


@dataclasses.dataclass(frozen=True)
class _NoFields:
    pass


@dataclasses.dataclass(frozen=True)
class _OneField:
    name: str = "x"


@pytest.mark.parametrize("value", [_NoFields(), _OneField(), _OneField("y")])
def test_dataclasses_of_no_field_or_one_round_trip(value: object) -> None:
    # The codec reads fields together (an attrgetter of several names), and
    # these two counts apart.
    document = serialization.to_document(value)  # type: ignore[arg-type]
    assert serialization.from_document(type(value), document) == value
    assert document == ({} if value == type(value)() else {"name": "y"})

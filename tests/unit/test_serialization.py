"""The stored shape of domain objects: exact round trips, small documents,
tolerant decoding."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from chat_service.domain import serialization as codec
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
from chat_service.domain.events import EventType
from chat_service.domain.model import (
    ChannelMetadata,
    ConversationState,
    ProcessingHints,
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
    ("content: full", codec.content_to_dict, codec.content_from_dict, FULL_CONTENT),
    (
        "content: unspecified type",
        codec.content_to_dict,
        codec.content_from_dict,
        MessageContent(None),
    ),
    (
        "channel metadata",
        codec.channel_metadata_to_dict,
        codec.channel_metadata_from_dict,
        FULL_METADATA,
    ),
    (
        "processing hints",
        codec.processing_hints_to_dict,
        codec.processing_hints_from_dict,
        ProcessingHints(Priority.URGENT, MessageType.IMAGE, True, True),
    ),
    ("state", codec.conversation_state_to_dict, codec.conversation_state_from_dict, FULL_STATE),
    (
        "conversation: full",
        codec.conversation_to_dict,
        codec.conversation_from_dict,
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
        codec.message_to_dict,
        codec.message_from_dict,
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
        codec.message_to_dict,
        codec.message_from_dict,
        make_message(make_conversation(), 1),
    ),
    (
        "send result: with replies",
        codec.send_result_to_dict,
        codec.send_result_from_dict,
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
        codec.send_result_to_dict,
        codec.send_result_from_dict,
        SendResult("m-1", "c-1", 1, ConversationState()),
    ),
    (
        "idempotency record",
        codec.idempotency_record_to_dict,
        codec.idempotency_record_from_dict,
        make_record(make_message(make_conversation(), 1), make_message(make_conversation(), 2)),
    ),
    (
        "event: full",
        codec.event_to_dict,
        codec.event_from_dict,
        make_event(
            make_conversation(),
            EventType.MESSAGE_SENT,
            make_message(make_conversation(), 5),
            metadata={"latency_ms": 12.5, "tags": ["a", "b"]},
        ),
    ),
    (
        "event: bare",
        codec.event_to_dict,
        codec.event_from_dict,
        make_event(make_conversation(), EventType.CONVERSATION_STARTED),
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
    assert codec.format_datetime(T0) == "2026-11-25T08:00:00.123456Z"
    assert codec.format_datetime(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)) == (
        "2026-01-02T03:04:05.000000Z"
    )


def test_other_offsets_are_stored_as_the_same_instant_in_utc() -> None:
    berlin = datetime(2026, 11, 25, 9, 0, 0, 123456, tzinfo=timezone(timedelta(hours=1)))

    text = codec.format_datetime(berlin)

    assert text == "2026-11-25T08:00:00.123456Z"
    assert codec.parse_datetime(text) == berlin


def test_parsed_datetimes_are_aware_utc() -> None:
    parsed = codec.parse_datetime("2026-11-25T10:00:00.123456+02:00")

    assert parsed == T0
    assert parsed.tzinfo is UTC


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        codec.format_datetime(datetime(2026, 11, 25, 8, 0))
    with pytest.raises(ValueError, match="offset"):
        codec.parse_datetime("2026-11-25T08:00:00")


# ----------------------------------------------------------- compact encoding


def test_defaults_are_left_out() -> None:
    assert codec.content_to_dict(MessageContent.of_text("hi")) == {"type": "text", "text": "hi"}
    assert codec.channel_metadata_to_dict(ChannelMetadata()) == {}
    assert codec.processing_hints_to_dict(ProcessingHints()) == {}
    assert codec.conversation_state_to_dict(ConversationState()) == {}


def test_non_default_falsy_values_are_kept() -> None:
    location = MessageContent(
        MessageType.LOCATION, language="", location=LocationContent(0.0, 0.0, accuracy_meters=0)
    )

    assert codec.content_to_dict(location) == {
        "type": "location",
        "language": "",
        "location": {"latitude": 0.0, "longitude": 0.0, "accuracy_meters": 0},
    }


def test_enums_are_stored_as_their_values() -> None:
    message = make_message(make_conversation(channel=Channel.SMS), 1, role=MessageRole.AGENT)

    document = codec.message_to_dict(message)

    assert (document["role"], document["channel"], document["delivery_status"]) == (
        "agent",
        "sms",
        "pending",
    )
    assert document["content"] == {"type": "text", "text": "hello"}
    assert document["created_at"] == "2026-11-25T08:00:01.123456Z"


# ---------------------------------------------------------- tolerant decoding


def test_missing_optional_keys_decode_to_defaults() -> None:
    message = codec.message_from_dict(
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
    document = codec.content_to_dict(MessageContent.of_text("hi")) | {"added_later": 1}

    assert codec.content_from_dict(document) == MessageContent.of_text("hi")

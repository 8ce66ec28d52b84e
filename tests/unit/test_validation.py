"""Validation of inbound messages and bot replies (domain/validation.py,
domain/content_checks.py)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from chat_service.domain import content_checks
from chat_service.domain.content import (
    Button,
    CarouselCard,
    LocationContent,
    MediaContent,
    MessageContent,
    QuickReply,
)
from chat_service.domain.content_limits import MAX_TEXT_LENGTH
from chat_service.domain.enums import ButtonType, Channel, MessageType, Priority
from chat_service.domain.errors import InvalidArgument
from chat_service.domain.fingerprint import request_fingerprint
from chat_service.domain.identifiers import identifier_problem
from chat_service.domain.model import ChannelMetadata, InboundMessage, JsonValue, ProcessingHints
from chat_service.domain.text import (
    QUOTE_LIMIT,
    normalize_search_query,
    normalize_text,
    quote,
    search_key,
    search_query_problem,
)
from chat_service.domain.validation import (
    MAX_ADDITIONAL_DATA_DEPTH,
    validate_content,
    validate_inbound,
)

URL = "https://cdn.example.com/files/a.png"
POSTBACK = Button(ButtonType.POSTBACK, "Yes", payload="YES")
LINK = Button(ButtonType.URL, "Open", url="https://example.com/order/1")
CALL = Button(ButtonType.PHONE, "Call us", payload="+14155550123")
SHARE = Button(ButtonType.SHARE, "Share")
CARD = CarouselCard(
    "Margherita", "Tomato and mozzarella", "https://cdn.example.com/m.jpg", (LINK, POSTBACK)
)
IMAGE = MediaContent(URL, "image/png", size_bytes=1024, alt_text="A cat", thumbnail_url=URL)
PLACE = LocationContent(48.8584, 2.2945, accuracy_meters=10, address="Champ de Mars, Paris")
REPLIES = (QuickReply("Red", "RED"), QuickReply("Green", "GREEN"), QuickReply("Blue", "BLUE"))

# One valid content of each message type; each also normalizes to itself.
VALID: dict[MessageType, MessageContent] = {
    MessageType.TEXT: MessageContent(
        MessageType.TEXT, text="Hello", buttons=(POSTBACK, LINK, CALL), quick_replies=REPLIES
    ),
    MessageType.IMAGE: MessageContent(MessageType.IMAGE, text="Look", media=IMAGE),
    MessageType.FILE: MessageContent(
        MessageType.FILE, media=MediaContent("https://example.com/a.pdf", "application/pdf")
    ),
    MessageType.AUDIO: MessageContent(
        MessageType.AUDIO, media=MediaContent("https://example.com/a.mp3", "audio/mpeg")
    ),
    MessageType.VIDEO: MessageContent(
        MessageType.VIDEO, media=MediaContent("http://example.com:8080/a.mp4", "video/mp4")
    ),
    MessageType.LOCATION: MessageContent(MessageType.LOCATION, location=PLACE),
    MessageType.QUICK_REPLY: MessageContent(
        MessageType.QUICK_REPLY, text="Pick a colour", quick_replies=REPLIES
    ),
    MessageType.CAROUSEL: MessageContent(
        MessageType.CAROUSEL, cards=(CARD, CarouselCard("Diavola", buttons=(CALL, SHARE)))
    ),
}
TEXT = VALID[MessageType.TEXT]


def inbound(content: MessageContent = TEXT, **changes: Any) -> InboundMessage:
    message = InboundMessage(
        tenant_id="tenant-a",
        message_id="msg-1",
        conversation_id="",
        user_id="user-1",
        channel=Channel.WEB,
        content=content,
    )
    return replace(message, **changes)


# ------------------------------------------------- one broken rule at a time


def content(kind: MessageType = MessageType.TEXT, **changes: Any) -> InboundMessage:
    return inbound(replace(VALID[kind], **changes))


def media(kind: MessageType = MessageType.IMAGE, **changes: Any) -> InboundMessage:
    original = VALID[kind].media
    assert original is not None
    return content(kind, media=replace(original, **changes))


def location(**changes: Any) -> InboundMessage:
    return content(MessageType.LOCATION, location=replace(PLACE, **changes))


def quick_reply(**changes: Any) -> InboundMessage:
    # The third one is broken, to check indexes are right.
    return content(quick_replies=(*REPLIES[:2], replace(REPLIES[2], **changes)))


def button(original: Button = POSTBACK, **changes: Any) -> InboundMessage:
    return content(buttons=(POSTBACK, replace(original, **changes)))


def card(**changes: Any) -> InboundMessage:
    return content(MessageType.CAROUSEL, cards=(CARD, replace(CARD, **changes)))


def card_button(original: Button = POSTBACK, **changes: Any) -> InboundMessage:
    return card(buttons=(LINK, replace(original, **changes)))


def metadata(**changes: Any) -> InboundMessage:
    return inbound(channel_metadata=ChannelMetadata(**changes))


def nested(depth: int) -> dict[str, JsonValue]:
    """An object `depth` levels deep (the object itself is level 1)."""
    value: dict[str, JsonValue] = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"next": value}
    return value


SMS_USER = {"channel": Channel.SMS}

BROKEN: list[tuple[str, InboundMessage, str, str]] = [
    # (case, message, field, part of the description)
    ("message_id charset", inbound(message_id="has space"), "message_id", "letters, digits"),
    ("message_id length", inbound(message_id="m" * 129), "message_id", "at most 128 characters"),
    ("user_id missing", inbound(user_id=""), "user_id", "is required"),
    ("user_id length", inbound(user_id="u" * 256), "user_id", "at most 255 characters, got 256"),
    ("session_id length", inbound(session_id="s" * 256), "session_id", "at most 255"),
    ("channel unspecified", inbound(channel=None), "channel", "is required"),
    ("type unspecified", content(type=None), "content.type", "is required"),
    ("text missing", content(text=""), "content.text", "required for TEXT"),
    ("text blank", content(text=" \n\t\x00 "), "content.text", "white space"),
    ("text length", content(text="a" * 4097), "content.text", "at most 4096 characters, got 4097"),
    # Limits apply to the text as given: trimming does not rescue it.
    ("text length untrimmed", content(text=" " + "a" * 4096), "content.text", "got 4097"),
    ("language case", content(language="EN"), "content.language", "'EN'"),
    ("language length", content(language="eng"), "content.language", "two lowercase letters"),
    (
        "media missing",
        content(MessageType.IMAGE, media=None),
        "content.media",
        "required for IMAGE",
    ),
    ("media on text", content(media=IMAGE), "content.media", "only allowed on IMAGE, FILE"),
    ("media url missing", media(url=""), "content.media.url", "is required"),
    (
        "media url scheme",
        media(url="ftp://example.com/a.png"),
        "content.media.url",
        "http or https",
    ),
    ("media url relative", media(url="/files/a.png"), "content.media.url", "absolute"),
    ("media url host", media(url="https:///a.png"), "content.media.url", "with a host"),
    ("media url space", media(url="https://exa mple.com/a"), "content.media.url", "white space"),
    ("media url port", media(url="https://example.com:99999/"), "content.media.url", "absolute"),
    (
        "media url length",
        media(url="https://example.com/" + "a" * 2029),
        "content.media.url",
        "at most 2048 characters, got 2049",
    ),
    ("mime missing", media(type=""), "content.media.type", "is required"),
    ("mime unknown", media(type="image/webp"), "content.media.type", "must be one of"),
    ("mime unfit", media(type="video/mp4"), "content.media.type", "does not fit IMAGE messages"),
    ("mime audio", media(MessageType.AUDIO, type="image/png"), "content.media.type", "audio/mpeg"),
    ("size negative", media(size_bytes=-1), "content.media.size_bytes", "got -1"),
    ("size over", media(size_bytes=52428801), "content.media.size_bytes", "0 to 52428800"),
    ("alt text", media(alt_text="a" * 501), "content.media.alt_text", "at most 500"),
    (
        "thumbnail",
        media(thumbnail_url="javascript:alert(1)"),
        "content.media.thumbnail_url",
        "http",
    ),
    (
        "location missing",
        content(MessageType.LOCATION, location=None),
        "content.location",
        "required for LOCATION",
    ),
    ("location on text", content(location=PLACE), "content.location", "only allowed on LOCATION"),
    ("latitude high", location(latitude=90.5), "content.location.latitude", "-90 to 90"),
    ("latitude low", location(latitude=-91.0), "content.location.latitude", "got -91.0"),
    ("latitude nan", location(latitude=math.nan), "content.location.latitude", "got nan"),
    ("longitude high", location(longitude=180.1), "content.location.longitude", "-180 to 180"),
    ("longitude inf", location(longitude=-math.inf), "content.location.longitude", "got -inf"),
    ("accuracy", location(accuracy_meters=-1), "content.location.accuracy_meters", "at least 0"),
    ("address", location(address="a" * 501), "content.location.address", "at most 500"),
    (
        "quick replies missing",
        content(MessageType.QUICK_REPLY, quick_replies=()),
        "content.quick_replies",
        "at least 1 quick reply",
    ),
    (
        "quick replies count",
        content(quick_replies=REPLIES * 4),
        "content.quick_replies",
        "at most 10 quick replies, got 12",
    ),
    ("qr title missing", quick_reply(title=""), "content.quick_replies[2].title", "is required"),
    (
        "qr title length",
        quick_reply(title="t" * 27),
        "content.quick_replies[2].title",
        "must be at most 20 characters, got 27",
    ),
    ("qr payload missing", quick_reply(payload=""), "content.quick_replies[2].payload", "required"),
    (
        "qr payload length",
        quick_reply(payload="p" * 1001),
        "content.quick_replies[2].payload",
        "1000",
    ),
    (
        "qr content type",
        quick_reply(content_type="location"),
        "content.quick_replies[2].content_type",
        "text, user_email, user_phone_number",
    ),
    ("buttons count", content(buttons=(POSTBACK,) * 4), "content.buttons", "at most 3 buttons"),
    ("button type", button(type=None), "content.buttons[1].type", "is required"),
    ("button title missing", button(title=""), "content.buttons[1].title", "is required"),
    ("button title length", button(title="b" * 21), "content.buttons[1].title", "at most 20"),
    ("postback payload", button(payload=""), "content.buttons[1].payload", "is required"),
    ("postback length", button(payload="p" * 1001), "content.buttons[1].payload", "at most 1000"),
    ("url button missing url", button(LINK, url=""), "content.buttons[1].url", "is required"),
    (
        "url button bad url",
        button(LINK, url="mailto:a@b.example"),
        "content.buttons[1].url",
        "http",
    ),
    ("phone no plus", button(CALL, payload="4155550123"), "content.buttons[1].payload", "E.164"),
    ("phone leading 0", button(CALL, payload="+0415555"), "content.buttons[1].payload", "E.164"),
    (
        "phone too long",
        button(CALL, payload="+1" + "2" * 15),
        "content.buttons[1].payload",
        "E.164",
    ),
    ("cards on text", content(cards=(CARD,)), "content.cards", "only allowed on CAROUSEL"),
    ("cards missing", content(MessageType.CAROUSEL, cards=()), "content.cards", "1 to 10 cards"),
    (
        "cards count",
        content(MessageType.CAROUSEL, cards=(CARD,) * 11),
        "content.cards",
        "at most 10 cards, got 11",
    ),
    ("card title missing", card(title=""), "content.cards[1].title", "is required"),
    ("card title length", card(title="c" * 81), "content.cards[1].title", "at most 80"),
    ("card subtitle", card(subtitle="s" * 81), "content.cards[1].subtitle", "at most 80"),
    ("card image", card(image_url="not a url"), "content.cards[1].image_url", "http"),
    ("card buttons", card(buttons=(LINK,) * 4), "content.cards[1].buttons", "at most 3 buttons"),
    ("card button type", card_button(type=None), "content.cards[1].buttons[1].type", "required"),
    ("card button title", card_button(title="b" * 21), "content.cards[1].buttons[1].title", "20"),
    ("card button url", card_button(LINK, url=""), "content.cards[1].buttons[1].url", "required"),
    (
        "card button phone",
        card_button(CALL, payload="call me"),
        "content.cards[1].buttons[1].payload",
        "E.164",
    ),
    *(
        (f"metadata {name}", metadata(**{name: "x" * 256}), f"channel_metadata.{name}", "255")
        for name in ("platform_message_id", "platform_user_id", "thread_id", "workspace_id")
    ),
    (
        "additional data size",
        metadata(additional_data={"blob": "x" * 16_400}),
        "channel_metadata.additional_data",
        "at most 16384 bytes",
    ),
    (
        "additional data depth",
        metadata(additional_data=nested(MAX_ADDITIONAL_DATA_DEPTH + 1)),
        "channel_metadata.additional_data",
        "at most 8 levels",
    ),
    (
        "additional data list depth",
        metadata(additional_data={"a": [[[[[[[[1]]]]]]]]}),
        "channel_metadata.additional_data",
        "at most 8 levels",
    ),
    (
        "additional data nan",
        metadata(additional_data={"x": math.nan}),
        "channel_metadata.additional_data",
        "JSON",
    ),
    (
        "carousel from an sms user",
        inbound(VALID[MessageType.CAROUSEL], **SMS_USER),
        "content.type",
        "sms users cannot send CAROUSEL messages; sms accepts TEXT and IMAGE",
    ),
    (
        "location from a messenger user",
        inbound(VALID[MessageType.LOCATION], channel=Channel.MESSENGER),
        "content.type",
        "cannot send LOCATION",
    ),
    (
        "video from a voice caller",
        inbound(VALID[MessageType.VIDEO], channel=Channel.VOICE),
        "content.type",
        "voice accepts TEXT and AUDIO",
    ),
]


@pytest.mark.parametrize(
    ("message", "field", "description"),
    [pytest.param(message, field, text, id=case) for case, message, field, text in BROKEN],
)
def test_each_rule_is_reported_on_its_field(
    message: InboundMessage, field: str, description: str
) -> None:
    with pytest.raises(InvalidArgument) as raised:
        validate_inbound(message)

    assert [v.field for v in raised.value.violations] == [field]
    assert description in raised.value.violations[0].description
    assert raised.value.reason == "INVALID_ARGUMENT"


def test_all_violations_are_reported_at_once() -> None:
    message = inbound(
        replace(
            TEXT,
            text="",
            language="english",
            quick_replies=(QuickReply("", "A"), QuickReply("B", "")),
            buttons=(replace(CALL, payload="5"),),
        ),
        user_id="",
        channel=None,
        channel_metadata=ChannelMetadata(thread_id="t" * 300),
    )

    with pytest.raises(InvalidArgument) as raised:
        validate_inbound(message)

    fields = [v.field for v in raised.value.violations]
    assert sorted(fields) == sorted(
        [
            "user_id",
            "channel",
            "content.text",
            "content.language",
            "content.quick_replies[0].title",
            "content.quick_replies[1].payload",
            "content.buttons[0].payload",
            "channel_metadata.thread_id",
        ]
    )
    assert all(field in raised.value.message for field in fields)


def test_field_prefix_is_prepended_verbatim() -> None:
    broken = replace(TEXT, quick_replies=(QuickReply("t" * 21, "T"),))

    with pytest.raises(InvalidArgument) as inbound_error:
        validate_inbound(inbound(broken, user_id=""), field_prefix="message.")
    with pytest.raises(InvalidArgument) as content_error:
        validate_content(broken, field_prefix="response_contents[1].")

    assert [v.field for v in inbound_error.value.violations] == [
        "message.user_id",
        "message.content.quick_replies[0].title",
    ]
    assert [v.field for v in content_error.value.violations] == [
        "response_contents[1].quick_replies[0].title"
    ]


# ------------------------------------------------------------- valid input


@pytest.mark.parametrize("kind", list(MessageType))
def test_a_valid_message_of_each_type_is_accepted_on_the_web(kind: MessageType) -> None:
    message = inbound(VALID[kind])

    assert validate_inbound(message) == message


@pytest.mark.parametrize(
    ("channel", "kind"),
    [
        (Channel.SMS, MessageType.IMAGE),
        (Channel.VOICE, MessageType.AUDIO),
        (Channel.WHATSAPP, MessageType.LOCATION),
        (Channel.SLACK, MessageType.FILE),
    ],
)
def test_channels_accept_what_their_users_can_send(channel: Channel, kind: MessageType) -> None:
    message = inbound(VALID[kind], channel=channel)

    assert validate_inbound(message) == message


def test_limits_are_inclusive() -> None:
    at_limits = inbound(
        replace(
            TEXT,
            text="a" * MAX_TEXT_LENGTH,
            quick_replies=(QuickReply("t" * 20, "p" * 1000),) * 10,
            buttons=(replace(POSTBACK, title="b" * 20, payload="p" * 1000),) * 3,
        ),
        message_id="m" * 128,
        user_id="u" * 255,
        session_id="s" * 255,
        channel_metadata=ChannelMetadata(
            platform_message_id="x" * 255, additional_data=nested(MAX_ADDITIONAL_DATA_DEPTH)
        ),
    )
    edges = location(latitude=-90.0, longitude=180.0, accuracy_meters=0)
    big_file = media(MessageType.FILE, size_bytes=52_428_800, url="https://e.example/" + "a" * 2030)

    assert validate_inbound(at_limits) == at_limits
    assert validate_inbound(edges) == edges
    assert validate_inbound(big_file) == big_file


def test_message_id_may_be_empty_and_takes_its_whole_charset() -> None:
    assert validate_inbound(inbound(message_id="")).message_id == ""
    assert validate_inbound(inbound(message_id="aZ09._:@-")).message_id == "aZ09._:@-"


# ----------------------------------------------------------- normalization


def test_text_is_normalized() -> None:
    raw = "  Cafe\u0301 ok\r\nline two\rthree\x00\x1b[0m\tend \u200d \n "

    result = validate_inbound(content(text=raw))

    assert result.content.text == "Caf\u00e9 ok\nline two\nthree[0m\tend \u200d"


def test_caption_of_media_is_normalized_too() -> None:
    result = validate_content(
        replace(VALID[MessageType.IMAGE], text="\tNice\r\n"), field_prefix="content."
    )

    assert result.text == "Nice"


def test_defaults_are_filled_in_and_nothing_else_changes() -> None:
    replies = (QuickReply(" Yes ", " YES ", ""), QuickReply("Mail", "M", "user_email"))
    message = inbound(
        replace(TEXT, language="", quick_replies=replies), user_id=" user ", session_id=" s "
    )

    result = validate_inbound(message)

    assert result.content.language == "en"
    assert result.content.quick_replies == (
        QuickReply(" Yes ", " YES ", "text"),
        QuickReply("Mail", "M", "user_email"),
    )
    assert replace(result, content=message.content) == message


def test_other_languages_are_kept() -> None:
    assert validate_inbound(content(language="fr")).content.language == "fr"


def test_normalization_is_idempotent() -> None:
    once = validate_content(replace(TEXT, text=" a\r\nb\x07 ", language=""), field_prefix="")

    assert validate_content(once, field_prefix="") == once


# ------------------------------------------------------------- fingerprint


def test_fingerprint_is_a_stable_sha256_hex_digest() -> None:
    first = request_fingerprint(inbound())

    assert first == request_fingerprint(inbound())
    assert len(first) == 64
    assert int(first, 16) >= 0


def test_fingerprint_ignores_message_id_and_tenant() -> None:
    assert request_fingerprint(inbound()) == request_fingerprint(
        inbound(message_id="other", tenant_id="tenant-b")
    )


def test_fingerprint_ignores_key_order_of_additional_data() -> None:
    one = inbound(channel_metadata=ChannelMetadata(additional_data={"a": 1, "b": {"c": 2, "d": 3}}))
    other = inbound(
        channel_metadata=ChannelMetadata(additional_data={"b": {"d": 3, "c": 2}, "a": 1})
    )

    assert request_fingerprint(one) == request_fingerprint(other)


T1 = datetime(2026, 11, 25, 8, 0, 0, 123456, tzinfo=UTC)


@pytest.mark.parametrize(
    "changed",
    [
        pytest.param(inbound(replace(TEXT, text="Hello!")), id="text"),
        pytest.param(inbound(replace(TEXT, language="fr")), id="language"),
        pytest.param(inbound(replace(TEXT, quick_replies=REPLIES[:2])), id="quick replies"),
        pytest.param(
            inbound(replace(TEXT, buttons=(replace(POSTBACK, payload="NO"), LINK, CALL))),
            id="button payload",
        ),
        pytest.param(inbound(user_id="user-2"), id="user"),
        pytest.param(inbound(conversation_id="conv-1"), id="conversation"),
        pytest.param(inbound(session_id="s-1"), id="session"),
        pytest.param(inbound(channel=Channel.SLACK), id="channel"),
        pytest.param(inbound(timestamp=T1), id="timestamp set"),
        pytest.param(
            inbound(channel_metadata=ChannelMetadata(additional_data={"k": "v"})), id="metadata"
        ),
        pytest.param(inbound(channel_metadata=ChannelMetadata(thread_id="t")), id="thread"),
        pytest.param(
            inbound(processing_hints=ProcessingHints(priority=Priority.URGENT)), id="priority"
        ),
        pytest.param(
            inbound(processing_hints=ProcessingHints(bypass_automation=True)), id="bypass"
        ),
    ],
)
def test_fingerprint_changes_with_anything_else(changed: InboundMessage) -> None:
    assert request_fingerprint(changed) != request_fingerprint(inbound())


def test_fingerprint_takes_timestamps_by_exact_value() -> None:
    later = T1 + timedelta(microseconds=1)

    assert request_fingerprint(inbound(timestamp=T1)) == request_fingerprint(inbound(timestamp=T1))
    assert request_fingerprint(inbound(timestamp=T1)) != request_fingerprint(
        inbound(timestamp=later)
    )


def test_fingerprint_tells_numbers_from_booleans_and_strings() -> None:
    def with_data(value: JsonValue) -> InboundMessage:
        return inbound(channel_metadata=ChannelMetadata(additional_data={"v": value}))

    digests = {request_fingerprint(with_data(value)) for value in (1, True, "1", 1.5, None)}

    assert len(digests) == 5


# ------------------------------------------------------------ bad input, bounded

HUGE = "x" * 1_000_000

HUGE_VALUES: list[tuple[str, InboundMessage, str]] = [
    ("language", content(language=HUGE), "content.language"),
    ("media type", media(type=HUGE), "content.media.type"),
    (
        "quick reply content type",
        quick_reply(content_type=HUGE),
        "content.quick_replies[2].content_type",
    ),
    ("phone payload", button(CALL, payload=HUGE), "content.buttons[1].payload"),
    ("card phone payload", card_button(CALL, payload=HUGE), "content.cards[1].buttons[1].payload"),
    ("text", content(text=HUGE), "content.text"),
    ("user_id", inbound(user_id=HUGE), "user_id"),
    ("message_id", inbound(message_id=HUGE), "message_id"),
    ("conversation_id", inbound(conversation_id=HUGE), "conversation_id"),
    ("media url", media(url=HUGE), "content.media.url"),
    (
        "additional data key",
        metadata(additional_data={"\x00" + HUGE: 1}),
        "channel_metadata.additional_data",
    ),
]


@pytest.mark.parametrize(
    ("message", "field"), [pytest.param(m, f, id=case) for case, m, f in HUGE_VALUES]
)
def test_an_error_quotes_at_most_a_short_prefix_of_a_huge_value(
    message: InboundMessage, field: str
) -> None:
    with pytest.raises(InvalidArgument) as raised:
        validate_inbound(message)

    assert [v.field for v in raised.value.violations] == [field]
    assert len(raised.value.violations[0].description) <= 200
    assert len(raised.value.message) <= 200


def test_quote_shows_a_prefix_and_the_length() -> None:
    assert quote("EN") == "'EN'"
    assert quote("x" * QUOTE_LIMIT) == repr("x" * QUOTE_LIMIT)
    assert quote("y" * 5000) == f"{'y' * QUOTE_LIMIT!r}... (5000 characters)"
    assert quote("a\x00\x1b[31m") == "'a\\x00\\x1b[31m'"  # control characters escaped


def test_an_oversized_text_is_refused_before_it_is_normalized(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lengths: list[int] = []

    def spying(text: str) -> str:
        lengths.append(len(text))
        return normalize_text(text)

    monkeypatch.setattr(content_checks, "normalize_text", spying)

    with pytest.raises(InvalidArgument):
        validate_inbound(content(text="\u0958" * (4 * 1024 * 1024)))
    assert all(length <= MAX_TEXT_LENGTH for length in lengths), lengths


def test_a_list_past_its_maximum_is_refused_without_a_violation_per_item() -> None:
    blank_reply = QuickReply("", "")
    blank_button = Button(None, "")
    message = content(
        quick_replies=(blank_reply,) * 100_000,
        buttons=(blank_button,) * 100_000,
        cards=(replace(CARD, title="", buttons=(blank_button,) * 1_000),) * 1_000,
    )

    with pytest.raises(InvalidArgument) as raised:
        validate_inbound(message)

    fields = [v.field for v in raised.value.violations]
    assert {"content.quick_replies", "content.buttons", "content.cards"} <= set(fields)
    # Only the items within each maximum are looked at: 10 quick replies, 3
    # buttons, 10 cards of 3 buttons each.
    assert "content.quick_replies[9].title" in fields
    assert not any(field.startswith("content.quick_replies[10]") for field in fields)
    assert not any(field.startswith("content.cards[10]") for field in fields)
    assert not any(".buttons[3]" in field for field in fields)
    assert len(fields) < 150


@pytest.mark.parametrize("value", ["a\x00b", "tab\there", "\x1b[31mred", "line\nbreak", "\x7f"])
@pytest.mark.parametrize(
    ("field", "message"),
    [
        ("user_id", lambda value: inbound(user_id=value)),
        ("session_id", lambda value: inbound(session_id=value)),
        ("channel_metadata.platform_user_id", lambda value: metadata(platform_user_id=value)),
        ("channel_metadata.thread_id", lambda value: metadata(thread_id=value)),
    ],
)
def test_ids_refuse_control_characters(
    field: str, message: Callable[[str], InboundMessage], value: str
) -> None:
    with pytest.raises(InvalidArgument) as raised:
        validate_inbound(message(value))

    assert [(v.field, v.description) for v in raised.value.violations] == [
        (field, "must not contain control characters")
    ]
    assert identifier_problem(value, maximum=255) is not None


def test_ids_take_any_other_character() -> None:
    for value in ("caf\u00e9", "user@example.com", "\u200bzero width", "a b", "\U0001f600"):
        assert identifier_problem(value, maximum=255) is None
        validate_inbound(inbound(user_id=value, session_id=value))


@pytest.mark.parametrize(
    "data",
    [{"a\x00b": 1}, {"outer": {"in\x00ner": 1}}, {"list": [{"\x1b": "x"}]}],
    ids=["top level", "nested", "inside a list"],
)
def test_additional_data_keys_refuse_control_characters(data: dict[str, JsonValue]) -> None:
    with pytest.raises(InvalidArgument) as raised:
        validate_inbound(metadata(additional_data=data))

    (violation,) = raised.value.violations
    assert violation.field == "channel_metadata.additional_data"
    assert "control characters" in violation.description


def test_additional_data_values_may_hold_control_characters() -> None:
    validated = validate_inbound(metadata(additional_data={"raw": "a\x00b\x1b"}))

    assert validated.channel_metadata.additional_data == {"raw": "a\x00b\x1b"}  # kept as is


# ------------------------------------------------------------------ search query


@pytest.mark.parametrize("query", ["a\x00b", "\x00", "bell\x07", "esc\x1b", "\x85next line"])
def test_a_search_query_with_control_characters_is_refused(query: str) -> None:
    assert search_query_problem(query) is not None


@pytest.mark.parametrize("query", ["", "refund", "a\tb", "two\nlines", "crlf\r\n", "x" * 200])
def test_a_search_query_may_hold_tabs_and_line_breaks(query: str) -> None:
    assert search_query_problem(query) is None


def test_a_search_query_is_measured_before_it_is_normalized() -> None:
    assert search_query_problem("x" * 201) == "must be at most 200 characters, got 201"
    assert search_query_problem("\x00" * 1_000_000) == (
        "must be at most 200 characters, got 1000000"
    )


def test_a_search_query_is_normalized_as_stored_text_is() -> None:
    decomposed = "cafe\u0301"
    assert normalize_search_query(decomposed) == "caf\u00e9"
    assert normalize_search_query(decomposed) == normalize_text(decomposed)
    assert normalize_search_query("a\r\nb\rc") == "a\nb\nc"
    assert normalize_search_query("  spaced  ") == "  spaced  "  # a substring: kept
    assert search_key("CAFE\u0301") == search_key("caf\u00e9") == "caf\u00e9"

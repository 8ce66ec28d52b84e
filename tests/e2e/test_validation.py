"""SendMessage input validation, end to end: the real server over a real channel.

The rules are those of SendMessageRequest as proto/chatbot/chat/v1/*.proto
documents them and chat_service/domain/validation.py enforces them. Every
rule has rows in CASES: a mutation of a valid request and the one field path
the BadRequest must name, or None where the request must be accepted (a
value exactly at a limit, an optional form) and answered by the bot. A
rejected request is INVALID_ARGUMENT (never INTERNAL) with one ErrorInfo,
and stores nothing. Then: several violations at once, each message type on
the web channel, what each channel accepts, and a reused message_id.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from chatbot.chat.v1 import chat_service_pb2 as pb
from chatbot.chat.v1 import chat_service_pb2_grpc, content_pb2, resources_pb2
from google.protobuf import struct_pb2, timestamp_pb2
from google.protobuf.message import Message as ProtoMessage

from tests.e2e.requests import (
    MEDIA_URL,
    VALID_CONTENTS,
    Channel,
    MessageType,
    TenantClient,
    card,
    carousel_content,
    failure,
    location,
    location_content,
    media,
    media_content,
    postback,
    quick_reply,
    quick_reply_content,
    send_request,
    text_content,
)
from tests.support.grpc_client import RichError

# One event loop and one channel for the whole module: hundreds of cases.
# Refused or decided before the store is touched: the MongoDB pass of
# `make test` leaves this module out (see the marker in pyproject.toml).
pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.store_independent]

Mutation = Callable[[pb.SendMessageRequest], None]

T = content_pb2
C = resources_pb2
IMAGE, FILE, AUDIO, VIDEO = (
    T.MESSAGE_TYPE_IMAGE,
    T.MESSAGE_TYPE_FILE,
    T.MESSAGE_TYPE_AUDIO,
    T.MESSAGE_TYPE_VIDEO,
)
MAX_MEDIA_BYTES = 52_428_800
# Timestamp seconds of 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z.
MIN_TIMESTAMP_SECONDS = -62_135_596_800
MAX_TIMESTAMP_SECONDS = 253_402_300_799


# ---------------------------------------------------------------- mutations


def setting(path: str, value: object) -> Mutation:
    """Set a dotted field path of the request (a message value is copied in)."""

    def mutate(request: pb.SendMessageRequest) -> None:
        *parents, name = path.split(".")
        target: ProtoMessage = request
        for parent in parents:
            target = getattr(target, parent)
        if isinstance(value, ProtoMessage):
            getattr(target, name).CopyFrom(value)
        else:
            setattr(target, name, value)

    return mutate


def content(value: content_pb2.MessageContent) -> Mutation:
    return setting("content", value)


def without_content(request: pb.SendMessageRequest) -> None:
    request.ClearField("content")


def timestamp(seconds: int, nanos: int = 0) -> Mutation:
    return setting("timestamp", timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos))


def additional_data(data: dict[str, Any]) -> Mutation:
    struct = struct_pb2.Struct()
    struct.update(data)
    return setting("channel_metadata.additional_data", struct)


def nested_objects(levels: int) -> dict[str, Any]:
    """An object `levels` deep, counting itself: {"k": {"k": ... "leaf"}}."""
    value: object = "leaf"
    for _ in range(levels):
        value = {"k": value}
    assert isinstance(value, dict)
    return value


def nested_lists(levels: int) -> dict[str, Any]:
    """An object holding lists, `levels` deep counting the object itself."""
    value: object = "leaf"
    for _ in range(levels - 1):
        value = [value]
    return {"k": value}


def json_of_bytes(size: int, char: str = "x") -> dict[str, Any]:
    """{"k": "xx..."}: exactly `size` bytes as compact UTF-8 JSON."""
    filler = size - len('{"k":""}')
    assert filler % len(char.encode()) == 0
    return {"k": char * (filler // len(char.encode()))}


def url_of_length(length: int) -> str:
    prefix = "https://cdn.example.com/"
    return prefix + "a" * (length - len(prefix))


# -------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    id: str
    mutations: tuple[Mutation, ...]
    # The field the single violation must name; None: the request is valid.
    field: str | None


def ok(case_id: str, *mutations: Mutation) -> Case:
    return Case(case_id, mutations, None)


def bad(case_id: str, field: str, *mutations: Mutation) -> Case:
    return Case(case_id, mutations, field)


def text_of(text: str) -> Mutation:
    return content(text_content(text))


def media_of(message_type: MessageType, mime: str = "image/png", **fields: object) -> Mutation:
    return content(media_content(message_type, mime, **fields))


def image(**fields: object) -> Mutation:
    return media_of(IMAGE, "image/png", **fields)


def located(**fields: object) -> Mutation:
    return content(location_content(**fields))


def quick_replies(*replies: content_pb2.QuickReply) -> Mutation:
    return content(quick_reply_content(*replies))


def buttons(*items: content_pb2.Button) -> Mutation:
    return content(text_content("pick one", buttons=list(items)))


def cards(*items: content_pb2.CarouselCard) -> Mutation:
    return content(carousel_content(*items))


def url_button(**fields: object) -> content_pb2.Button:
    values: dict[str, object] = {
        "type": T.BUTTON_TYPE_URL,
        "title": "Open",
        "url": "https://shop.example.com/",
    }
    return content_pb2.Button(**(values | fields))  # type: ignore[arg-type]


def phone_button(number: str) -> content_pb2.Button:
    return content_pb2.Button(type=T.BUTTON_TYPE_PHONE, title="Call us", payload=number)


CASES: list[Case] = [
    # ---- message_id: 1 to 128 characters from [A-Za-z0-9._:@-]; empty = generated
    ok("message-id-empty-is-generated", setting("message_id", "")),
    ok("message-id-128", setting("message_id", "m" * 128)),
    bad("message-id-129", "message_id", setting("message_id", "m" * 129)),
    ok("message-id-every-allowed-char", setting("message_id", "Az09._:@-x")),
    bad("message-id-space", "message_id", setting("message_id", "two words")),
    bad("message-id-slash", "message_id", setting("message_id", "a/b")),
    bad("message-id-non-ascii", "message_id", setting("message_id", "caf\u00e9")),
    # ---- user_id: required, 1 to 255
    bad("user-id-empty", "user_id", setting("user_id", "")),
    ok("user-id-255", setting("user_id", "u" * 255)),
    bad("user-id-256", "user_id", setting("user_id", "u" * 256)),
    # ---- session_id: at most 255
    ok("session-id-255", setting("session_id", "s" * 255)),
    bad("session-id-256", "session_id", setting("session_id", "s" * 256)),
    # ---- channel: required, UNSPECIFIED rejected
    bad("channel-unspecified", "channel", setting("channel", resources_pb2.CHANNEL_UNSPECIFIED)),
    bad("channel-unknown-number", "channel", setting("channel", 99)),
    # ---- processing_hints: unset means no preference; an unknown number is refused
    ok("priority-unspecified", setting("processing_hints.priority", C.PRIORITY_UNSPECIFIED)),
    ok("priority-urgent", setting("processing_hints.priority", C.PRIORITY_URGENT)),
    bad(
        "priority-unknown-number",
        "processing_hints.priority",
        setting("processing_hints.priority", 99),
    ),
    ok(
        "expected-response-type-quick-reply",
        setting("processing_hints.expected_response_type", T.MESSAGE_TYPE_QUICK_REPLY),
    ),
    bad(
        "expected-response-type-unknown-number",
        "processing_hints.expected_response_type",
        setting("processing_hints.expected_response_type", 99),
    ),
    # ---- timestamp: any instant a Timestamp allows (0001-01-01 .. 9999-12-31)
    ok("timestamp-min", timestamp(MIN_TIMESTAMP_SECONDS)),
    ok("timestamp-max", timestamp(MAX_TIMESTAMP_SECONDS, 999_999_999)),
    bad("timestamp-before-year-1", "timestamp", timestamp(MIN_TIMESTAMP_SECONDS - 1)),
    bad("timestamp-after-year-9999", "timestamp", timestamp(MAX_TIMESTAMP_SECONDS + 1)),
    bad("timestamp-huge-seconds", "timestamp", timestamp(2**62)),
    bad("timestamp-negative-nanos", "timestamp", timestamp(0, -1)),
    bad("timestamp-nanos-overflow", "timestamp", timestamp(0, 1_000_000_000)),
    # ---- content.type: required, UNSPECIFIED rejected
    bad("content-missing", "content.type", without_content),
    bad(
        "content-type-unspecified",
        "content.type",
        content(content_pb2.MessageContent(text="hello")),
    ),
    bad(
        "content-type-unknown-number",
        "content.type",
        content(content_pb2.MessageContent(type=99, text="hello")),  # type: ignore[arg-type]
    ),
    # ---- content.text: required for TEXT; at most 4096 code points, once normalized too
    bad("text-missing-on-text", "content.text", text_of("")),
    bad("text-only-blank-and-controls", "content.text", text_of(" \t\u0007\r\n ")),
    ok("text-4096", text_of("x" * 4096)),
    bad("text-4097", "content.text", text_of("x" * 4097)),
    ok("text-4096-astral-code-points", text_of("\U0001f600" * 4096)),
    bad("text-4097-astral-code-points", "content.text", text_of("\U0001f600" * 4097)),
    # U+0958 is excluded from composition: NFC turns each into two code points.
    bad("text-longer-than-4096-once-nfc", "content.text", text_of("\u0958" * 4096)),
    ok("text-optional-caption-on-image", image(), setting("content.text", "my cat")),
    # ---- content.language: ISO 639-1, two lowercase letters
    ok("language-fr", setting("content.language", "fr")),
    bad("language-uppercase", "content.language", setting("content.language", "EN")),
    bad("language-three-letters", "content.language", setting("content.language", "eng")),
    bad("language-one-letter", "content.language", setting("content.language", "e")),
    bad("language-region-tag", "content.language", setting("content.language", "en-US")),
    # ---- content.media: required on IMAGE, FILE, AUDIO, VIDEO; only there
    *(
        bad(
            f"media-missing-on-{T.MessageType.Name(kind).removeprefix('MESSAGE_TYPE_').lower()}",
            "content.media",
            content(content_pb2.MessageContent(type=kind)),
        )
        for kind in (IMAGE, FILE, AUDIO, VIDEO)
    ),
    bad("media-on-text", "content.media", setting("content.media", media())),
    bad(
        "media-on-location",
        "content.media",
        located(),
        setting("content.media", media()),
    ),
    # media.url: required, absolute http(s), at most 2048
    bad("media-url-missing", "content.media.url", image(url="")),
    bad("media-url-ftp", "content.media.url", image(url="ftp://cdn.example.com/a.png")),
    bad("media-url-relative", "content.media.url", image(url="/files/a.png")),
    bad("media-url-no-host", "content.media.url", image(url="https://")),
    bad("media-url-white-space", "content.media.url", image(url="https://cdn.example.com/a b")),
    bad("media-url-bad-port", "content.media.url", image(url="https://cdn.example.com:99999/")),
    ok("media-url-http", image(url="http://cdn.example.com/a.png")),
    ok("media-url-2048", image(url=url_of_length(2048))),
    bad("media-url-2049", "content.media.url", image(url=url_of_length(2049))),
    # media.type: required; image/* for IMAGE, video/mp4 VIDEO, audio/mpeg AUDIO,
    # any of those or application/pdf for FILE
    bad("media-mime-missing", "content.media.type", image(type="")),
    bad("media-mime-unknown", "content.media.type", image(type="image/bmp")),
    bad("media-mime-video-on-image", "content.media.type", media_of(IMAGE, "video/mp4")),
    bad("media-mime-pdf-on-image", "content.media.type", media_of(IMAGE, "application/pdf")),
    bad("media-mime-image-on-video", "content.media.type", media_of(VIDEO, "image/png")),
    bad("media-mime-video-on-audio", "content.media.type", media_of(AUDIO, "video/mp4")),
    ok("media-mime-gif-on-image", media_of(IMAGE, "image/gif")),
    ok("media-mime-pdf-on-file", media_of(FILE, "application/pdf")),
    ok("media-mime-png-on-file", media_of(FILE, "image/png")),
    ok("media-mime-mp4-on-file", media_of(FILE, "video/mp4")),
    # media.size_bytes: 0 to 52428800
    ok("media-size-0", image(size_bytes=0)),
    ok("media-size-52428800", image(size_bytes=MAX_MEDIA_BYTES)),
    bad("media-size-52428801", "content.media.size_bytes", image(size_bytes=MAX_MEDIA_BYTES + 1)),
    bad("media-size-negative", "content.media.size_bytes", image(size_bytes=-1)),
    # media.alt_text: at most 500
    ok("media-alt-text-500", image(alt_text="a" * 500)),
    bad("media-alt-text-501", "content.media.alt_text", image(alt_text="a" * 501)),
    # media.thumbnail_url: optional absolute http(s)
    ok("media-thumbnail-url", image(thumbnail_url=f"{MEDIA_URL}.thumb.png")),
    bad(
        "media-thumbnail-url-relative", "content.media.thumbnail_url", image(thumbnail_url="t.png")
    ),
    bad(
        "media-thumbnail-url-javascript",
        "content.media.thumbnail_url",
        image(thumbnail_url="javascript:alert(1)"),
    ),
    # ---- content.location: required on LOCATION; only there
    bad(
        "location-missing",
        "content.location",
        content(T.MessageContent(type=T.MESSAGE_TYPE_LOCATION)),
    ),
    bad("location-on-text", "content.location", setting("content.location", location())),
    ok("latitude-90", located(latitude=90.0)),
    ok("latitude-minus-90", located(latitude=-90.0)),
    bad("latitude-above-90", "content.location.latitude", located(latitude=90.000001)),
    bad("latitude-below-minus-90", "content.location.latitude", located(latitude=-90.5)),
    bad("latitude-nan", "content.location.latitude", located(latitude=float("nan"))),
    bad("latitude-infinite", "content.location.latitude", located(latitude=float("inf"))),
    ok("longitude-180", located(longitude=180.0)),
    ok("longitude-minus-180", located(longitude=-180.0)),
    bad("longitude-above-180", "content.location.longitude", located(longitude=180.5)),
    bad("longitude-below-minus-180", "content.location.longitude", located(longitude=-181.0)),
    bad("longitude-nan", "content.location.longitude", located(longitude=float("nan"))),
    ok("accuracy-0", located(accuracy_meters=0)),
    bad("accuracy-negative", "content.location.accuracy_meters", located(accuracy_meters=-1)),
    ok("address-500", located(address="a" * 500)),
    bad("address-501", "content.location.address", located(address="a" * 501)),
    # ---- content.quick_replies: at least 1 on QUICK_REPLY; at most 10; allowed on any type
    bad(
        "quick-replies-missing",
        "content.quick_replies",
        content(T.MessageContent(type=T.MESSAGE_TYPE_QUICK_REPLY, text="yes")),
    ),
    ok("quick-replies-10", quick_replies(*[quick_reply(payload=f"p{i}") for i in range(10)])),
    bad(
        "quick-replies-11",
        "content.quick_replies",
        quick_replies(*[quick_reply(payload=f"p{i}") for i in range(11)]),
    ),
    ok("quick-replies-on-text", lambda r: r.content.quick_replies.append(quick_reply())),
    bad(
        "quick-reply-title-empty",
        "content.quick_replies[0].title",
        quick_replies(quick_reply(title="")),
    ),
    ok("quick-reply-title-20", quick_replies(quick_reply(title="t" * 20))),
    bad(
        "quick-reply-title-21-third",
        "content.quick_replies[2].title",
        quick_replies(quick_reply(), quick_reply(), quick_reply(title="t" * 21)),
    ),
    bad(
        "quick-reply-payload-empty",
        "content.quick_replies[0].payload",
        quick_replies(quick_reply(payload="")),
    ),
    ok("quick-reply-payload-1000", quick_replies(quick_reply(payload="p" * 1000))),
    bad(
        "quick-reply-payload-1001",
        "content.quick_replies[0].payload",
        quick_replies(quick_reply(payload="p" * 1001)),
    ),
    ok("quick-reply-content-type-email", quick_replies(quick_reply(content_type="user_email"))),
    ok(
        "quick-reply-content-type-phone",
        quick_replies(quick_reply(content_type="user_phone_number")),
    ),
    ok("quick-reply-content-type-text", quick_replies(quick_reply(content_type="text"))),
    bad(
        "quick-reply-content-type-unknown",
        "content.quick_replies[0].content_type",
        quick_replies(quick_reply(content_type="email")),
    ),
    # ---- content.buttons: at most 3, allowed on any type
    ok("buttons-3", buttons(postback(), postback(), postback())),
    bad("buttons-4", "content.buttons", buttons(postback(), postback(), postback(), postback())),
    ok("buttons-on-image", image(), lambda r: r.content.buttons.append(postback())),
    bad(
        "button-type-unspecified",
        "content.buttons[0].type",
        buttons(postback(type=T.BUTTON_TYPE_UNSPECIFIED)),
    ),
    bad("button-type-unknown-number", "content.buttons[0].type", buttons(postback(type=42))),
    bad("button-title-empty", "content.buttons[0].title", buttons(postback(title=""))),
    ok("button-title-20", buttons(postback(title="t" * 20))),
    bad(
        "button-title-21", "content.buttons[1].title", buttons(postback(), postback(title="t" * 21))
    ),
    bad("postback-payload-empty", "content.buttons[0].payload", buttons(postback(payload=""))),
    ok("postback-payload-1000", buttons(postback(payload="p" * 1000))),
    bad(
        "postback-payload-1001", "content.buttons[0].payload", buttons(postback(payload="p" * 1001))
    ),
    ok("phone-button-e164", buttons(phone_button("+14155550123"))),
    ok("phone-button-15-digits", buttons(phone_button("+123456789012345"))),
    bad(
        "phone-button-16-digits",
        "content.buttons[0].payload",
        buttons(phone_button("+1234567890123456")),
    ),
    bad("phone-button-no-plus", "content.buttons[0].payload", buttons(phone_button("14155550123"))),
    bad(
        "phone-button-leading-zero", "content.buttons[0].payload", buttons(phone_button("+0415555"))
    ),
    bad("phone-button-empty", "content.buttons[0].payload", buttons(phone_button(""))),
    ok("url-button", buttons(url_button())),
    bad("url-button-url-missing", "content.buttons[0].url", buttons(url_button(url=""))),
    bad(
        "url-button-url-javascript",
        "content.buttons[0].url",
        buttons(url_button(url="javascript:x()")),
    ),
    bad(
        "url-button-payload-1001",
        "content.buttons[0].payload",
        buttons(url_button(payload="p" * 1001)),
    ),
    ok("share-button", buttons(content_pb2.Button(type=T.BUTTON_TYPE_SHARE, title="Share"))),
    # ---- content.cards: CAROUSEL only, 1 to 10
    bad("cards-missing", "content.cards", content(T.MessageContent(type=T.MESSAGE_TYPE_CAROUSEL))),
    ok("cards-10", cards(*[card() for _ in range(10)])),
    bad("cards-11", "content.cards", cards(*[card() for _ in range(11)])),
    bad("cards-on-text", "content.cards", lambda r: r.content.cards.append(card())),
    bad("card-title-empty", "content.cards[0].title", cards(card(title=""))),
    ok("card-title-80", cards(card(title="t" * 80))),
    bad("card-title-81", "content.cards[1].title", cards(card(), card(title="t" * 81))),
    ok("card-subtitle-80", cards(card(subtitle="s" * 80))),
    bad("card-subtitle-81", "content.cards[0].subtitle", cards(card(subtitle="s" * 81))),
    ok("card-without-image", cards(card(image_url=""))),
    bad("card-image-url-relative", "content.cards[0].image_url", cards(card(image_url="img.png"))),
    ok("card-buttons-3", cards(card(buttons=[postback(), postback(), postback()]))),
    bad(
        "card-buttons-4",
        "content.cards[0].buttons",
        cards(card(buttons=[postback(), postback(), postback(), postback()])),
    ),
    bad(
        "card-button-title-21",
        "content.cards[1].buttons[2].title",
        cards(card(), card(buttons=[postback(), postback(), postback(title="t" * 21)])),
    ),
    bad(
        "card-button-phone-not-e164",
        "content.cards[0].buttons[0].payload",
        cards(card(buttons=[phone_button("call me")])),
    ),
    bad(
        "card-button-type-unspecified",
        "content.cards[0].buttons[0].type",
        cards(card(buttons=[postback(type=T.BUTTON_TYPE_UNSPECIFIED)])),
    ),
    # ---- channel_metadata: strings at most 255; additional_data 16 KiB, 8 levels
    *(
        case
        for name in ("platform_message_id", "platform_user_id", "thread_id", "workspace_id")
        for case in (
            ok(f"{name}-255", setting(f"channel_metadata.{name}", "x" * 255)),
            bad(
                f"{name}-256",
                f"channel_metadata.{name}",
                setting(f"channel_metadata.{name}", "x" * 256),
            ),
        )
    ),
    ok("additional-data-8-levels", additional_data(nested_objects(8))),
    bad(
        "additional-data-9-levels",
        "channel_metadata.additional_data",
        additional_data(nested_objects(9)),
    ),
    ok("additional-data-8-levels-of-lists", additional_data(nested_lists(8))),
    bad(
        "additional-data-9-levels-of-lists",
        "channel_metadata.additional_data",
        additional_data(nested_lists(9)),
    ),
    ok("additional-data-16384-bytes", additional_data(json_of_bytes(16_384))),
    bad(
        "additional-data-16385-bytes",
        "channel_metadata.additional_data",
        additional_data(json_of_bytes(16_385)),
    ),
    ok("additional-data-16384-utf8-bytes", additional_data(json_of_bytes(16_384, "\u00e9"))),
    bad(
        "additional-data-16386-utf8-bytes",
        "channel_metadata.additional_data",
        additional_data(json_of_bytes(16_386, "\u00e9")),
    ),
    bad(
        "additional-data-nan",
        "channel_metadata.additional_data",
        additional_data({"score": float("nan")}),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
async def test_each_rule_of_send_message_request(client: TenantClient, case: Case) -> None:
    request = send_request()
    for mutate in case.mutations:
        mutate(request)

    if case.field is None:
        response = await client.send(request)
        meta = response.processing_metadata
        assert meta.sequence == 1
        # The bot itself answers a valid message, however close to a limit.
        assert (meta.engine, meta.fallback_used) == ("builtin", False), meta
        assert response.replies
        listed = await client.list_conversations()
        assert [c.conversation_id for c in listed.conversations] == [response.conversation_id]
        inbound = (await client.list_messages(response.conversation_id)).messages[0]
        assert inbound.message_id == (request.message_id or response.message_id)
        if request.HasField("timestamp"):  # kept to the microsecond
            sent = request.timestamp
            assert (inbound.client_time.seconds, inbound.client_time.nanos) == (
                sent.seconds,
                sent.nanos // 1000 * 1000,
            )
        return

    error = await failure(client.send(request))
    assert_invalid(error)
    assert error.fields == [case.field], error.field_violations
    assert all(description for _, description in error.field_violations)
    # A refused message leaves no trace: no conversation, no message.
    assert not (await client.list_conversations()).conversations


def assert_invalid(error: RichError) -> None:
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT, error
    assert error.reason == "INVALID_ARGUMENT"
    assert error.domain


async def test_every_violation_of_a_request_is_reported_at_once(client: TenantClient) -> None:
    request = send_request(
        text_content(
            "x" * 4097,
            language="EN",
            buttons=[url_button(title="", url="")],
            quick_replies=[quick_reply(), quick_reply(payload="")],
        ),
        user_id="",
        channel=resources_pb2.CHANNEL_UNSPECIFIED,
        message_id="not valid",
    )
    request.channel_metadata.thread_id = "t" * 256

    error = await failure(client.send(request))

    assert_invalid(error)
    assert sorted(error.fields) == sorted(
        [
            "message_id",
            "user_id",
            "channel",
            "content.text",
            "content.language",
            "content.quick_replies[1].payload",
            "content.buttons[0].title",
            "content.buttons[0].url",
            "channel_metadata.thread_id",
        ]
    )
    assert not (await client.list_conversations()).conversations


@pytest.mark.parametrize(
    "message_type", list(VALID_CONTENTS), ids=lambda kind: T.MessageType.Name(kind)
)
async def test_a_valid_message_of_each_type_is_accepted_and_answered_on_web(
    client: TenantClient, message_type: MessageType
) -> None:
    response = await client.send(
        send_request(VALID_CONTENTS[message_type], message_id=f"valid-{message_type}")
    )

    meta = response.processing_metadata
    assert (meta.engine, meta.fallback_used, meta.sequence) == ("builtin", False, 1)
    assert response.HasField("response")
    assert [reply.sequence for reply in response.replies] == list(meta.reply_sequences)
    assert response.replies
    for reply in response.replies:
        assert reply.role == resources_pb2.MESSAGE_ROLE_BOT
        assert reply.reply_to_message_id == response.message_id
    stored = (await client.list_messages(response.conversation_id)).messages
    assert stored[0].message_id == f"valid-{message_type}"
    assert stored[0].role == resources_pb2.MESSAGE_ROLE_USER
    assert stored[0].content.type == message_type
    assert len(stored) == 1 + len(response.replies)


_MEDIA_TYPES = {IMAGE, FILE, AUDIO, VIDEO}
# What an end user can send from each platform (see domain/channel_rules.py for
# the platforms' documentation): the rest is refused on `content.type`.
INBOUND_TYPES: Mapping[Channel, set[MessageType]] = {
    C.CHANNEL_WEB: set(VALID_CONTENTS),
    C.CHANNEL_WHATSAPP: {T.MESSAGE_TYPE_TEXT, *_MEDIA_TYPES, T.MESSAGE_TYPE_LOCATION},
    C.CHANNEL_MESSENGER: {T.MESSAGE_TYPE_TEXT, *_MEDIA_TYPES},
    C.CHANNEL_SLACK: {T.MESSAGE_TYPE_TEXT, *_MEDIA_TYPES},
    C.CHANNEL_TEAMS: {T.MESSAGE_TYPE_TEXT, IMAGE, FILE},
    C.CHANNEL_SMS: {T.MESSAGE_TYPE_TEXT, IMAGE},
    C.CHANNEL_VOICE: {T.MESSAGE_TYPE_TEXT, AUDIO},
}
CHANNEL_CASES = [
    pytest.param(
        channel,
        kind,
        kind in allowed,
        id=f"{C.Channel.Name(channel)}-{T.MessageType.Name(kind)}".replace("CHANNEL_", "")
        .replace("MESSAGE_TYPE_", "")
        .lower(),
    )
    for channel, allowed in INBOUND_TYPES.items()
    for kind in VALID_CONTENTS
]


@pytest.mark.parametrize(("channel", "message_type", "allowed"), CHANNEL_CASES)
async def test_channel_inbound_rules(
    client: TenantClient, channel: Channel, message_type: MessageType, allowed: bool
) -> None:
    request = send_request(VALID_CONTENTS[message_type], channel=channel)

    if allowed:
        response = await client.send(request)
        assert (await client.get(response.conversation_id)).channel == channel
        return
    error = await failure(client.send(request))
    assert_invalid(error)
    assert error.fields == ["content.type"]
    assert not (await client.list_conversations()).conversations


async def test_a_reused_message_id_with_other_content_is_refused(
    client: TenantClient, module_stub: chat_service_pb2_grpc.ChatServiceAsyncStub
) -> None:
    first = await client.send(send_request(text_content("first words"), message_id="dup-1"))

    error = await failure(
        client.send(send_request(text_content("other words"), message_id="dup-1"))
    )

    assert_invalid_reason(error, "MESSAGE_ID_REUSED")
    assert error.fields == ["message_id"]
    stored = (await client.list_messages(first.conversation_id)).messages
    assert [m.content.text for m in stored][:1] == ["first words"]
    assert len(stored) == 1 + len(first.replies)
    # The same id with the same content is a retry, answered from the record.
    retry = module_stub.SendMessage(
        send_request(text_content("first words"), message_id="dup-1"), metadata=client.metadata
    )
    assert await retry == first
    assert ("x-idempotent-replay", "true") in tuple(await retry.trailing_metadata() or ())


def assert_invalid_reason(error: RichError, reason: str) -> None:
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT, error
    assert error.reason == reason
    assert error.domain

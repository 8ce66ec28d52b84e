"""WhatsApp Cloud API webhooks (documented payloads under tests/fixtures) as typed values."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from adapters.channels.meta import WEBHOOK_PAYLOAD_INVALID, Skipped
from adapters.channels.whatsapp import (
    WhatsAppError,
    WhatsAppInboundMessage,
    WhatsAppStatusUpdate,
    parse_webhook,
)
from chat_service.domain.content import LocationContent, MediaContent, MessageContent
from chat_service.domain.enums import DeliveryStatus, MessageType
from chat_service.domain.errors import InvalidArgument

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "webhooks" / "whatsapp"
PHONE_NUMBER_ID = "106540352242922"
WA_ID = "16505551234"
SENT_AT = datetime(2025, 6, 8, 20, 59, 43, tzinfo=UTC)  # "1749416383"


def fixture(name: str) -> bytes:
    return (FIXTURES / f"{name}.json").read_bytes()


def only_message(name: str) -> WhatsAppInboundMessage:
    parsed = parse_webhook(fixture(name))
    assert parsed.statuses == ()
    assert parsed.skipped == ()
    (message,) = parsed.messages
    return message


def inbound(
    wamid: str, kind: str, content: MessageContent, **extra: object
) -> WhatsAppInboundMessage:
    return WhatsAppInboundMessage(
        platform_message_id=wamid,
        account_id=PHONE_NUMBER_ID,
        user_id=WA_ID,
        user_name="Sheena Nelson",
        sent_at=SENT_AT,
        kind=kind,
        content=content,
        **extra,  # type: ignore[arg-type]
    )


EXPECTED_MESSAGES = {
    "text_message": inbound(
        "wamid.TEXT1", "text", MessageContent.of_text("Does it come in another color?")
    ),
    "image_message": inbound(
        "wamid.IMAGE1",
        "image",
        MessageContent(
            type=MessageType.IMAGE, text="Here it is", media=MediaContent(url="", type="image/jpeg")
        ),
        media_id="1003383421387256",
    ),
    "audio_message": inbound(
        "wamid.AUDIO1",
        "audio",
        MessageContent(
            type=MessageType.AUDIO, media=MediaContent(url="", type="audio/ogg; codecs=opus")
        ),
        media_id="1003383421387257",
    ),
    "video_message": inbound(
        "wamid.VIDEO1",
        "video",
        MessageContent(
            type=MessageType.VIDEO, text="Unboxing", media=MediaContent(url="", type="video/mp4")
        ),
        media_id="1003383421387258",
    ),
    "document_message": inbound(
        "wamid.DOC1",
        "document",
        MessageContent(
            type=MessageType.FILE,
            text="Invoice",
            media=MediaContent(url="", type="application/pdf", alt_text="invoice.pdf"),
        ),
        media_id="1003383421387259",
    ),
    "sticker_message": inbound(
        "wamid.STICKER1",
        "sticker",
        MessageContent(type=MessageType.IMAGE, media=MediaContent(url="", type="image/webp")),
        media_id="1003383421387260",
    ),
    "location_message": inbound(
        "wamid.LOC1",
        "location",
        MessageContent(
            type=MessageType.LOCATION,
            location=LocationContent(
                37.483307,
                -122.148981,
                address="Meta Headquarters, 1 Hacker Way, Menlo Park, CA 94025",
            ),
        ),
    ),
    "interactive_button_reply": inbound(
        "wamid.BTN1",
        "interactive.button_reply",
        MessageContent.of_text("Yes"),
        reply_payload="confirm_yes",
        context_message_id="wamid.OUTBOUND1",
    ),
    "interactive_list_reply": inbound(
        "wamid.LIST1",
        "interactive.list_reply",
        MessageContent.of_text("Express"),
        reply_payload="priority_express",
        context_message_id="wamid.OUTBOUND2",
    ),
    "template_button_reply": inbound(
        "wamid.TPLBTN1",
        "button",
        MessageContent.of_text("Stop promotions"),
        reply_payload="STOP_PROMOS",
        context_message_id="wamid.TEMPLATE1",
    ),
    # Unmapped types are kept (stored as such, polite reply), never an error to Meta.
    "reaction_message": inbound(
        "wamid.REACT1",
        "reaction",
        MessageContent.of_text("[unsupported WhatsApp message: reaction]"),
        supported=False,
    ),
    "unsupported_message": inbound(
        "wamid.UNSUP1",
        "unsupported",
        MessageContent.of_text("[unsupported WhatsApp message: unsupported]"),
        supported=False,
    ),
}


@pytest.mark.parametrize("name", sorted(EXPECTED_MESSAGES))
def test_each_documented_message_parses_to_its_typed_value(name: str) -> None:
    assert only_message(name) == EXPECTED_MESSAGES[name]


STATUS_AT = datetime(2025, 6, 18, 16, 22, 53, tzinfo=UTC)  # "1750263773"


@pytest.mark.parametrize(
    ("name", "status"),
    [
        ("status_sent", DeliveryStatus.SENT),
        ("status_delivered", DeliveryStatus.DELIVERED),
        ("status_read", DeliveryStatus.READ),
    ],
)
def test_each_documented_status_parses(name: str, status: DeliveryStatus) -> None:
    parsed = parse_webhook(fixture(name))
    assert parsed.messages == ()
    assert parsed.skipped == ()
    assert parsed.statuses == (
        WhatsAppStatusUpdate("wamid.OUTBOUND1", PHONE_NUMBER_ID, WA_ID, status, STATUS_AT),
    )


def test_a_failed_status_carries_its_errors() -> None:
    (update,) = parse_webhook(fixture("status_failed")).statuses
    assert update.status is DeliveryStatus.FAILED
    assert update.errors == (
        WhatsAppError(
            131026, "Message undeliverable", "Message undeliverable", "Message Undeliverable."
        ),
    )


def test_every_fixture_is_covered() -> None:
    names = {path.stem for path in FIXTURES.glob("*.json")}
    covered = set(EXPECTED_MESSAGES) | {
        "status_sent",
        "status_delivered",
        "status_read",
        "status_failed",
    }
    assert names == covered


def test_untracked_statuses_and_other_fields_are_skipped_with_a_reason() -> None:
    raw = (
        b'{"object":"whatsapp_business_account","entry":[{"id":"1","changes":['
        b'{"field":"account_update","value":{"event":"VERIFIED_ACCOUNT"}},'
        b'{"field":"messages","value":{"metadata":{"phone_number_id":"9"},'
        b'"statuses":[{"id":"wamid.X","status":"deleted","timestamp":"1","recipient_id":"2"}]}}]}]}'
    )
    assert parse_webhook(raw).skipped == (
        Skipped("entry[0].changes[0]", "field 'account_update' is not handled"),
        Skipped("entry[0].changes[1].value.statuses[0]", "status 'deleted' is not tracked"),
    )


def test_an_empty_entry_list_is_nothing_to_do() -> None:
    assert parse_webhook(b'{"object":"whatsapp_business_account","entry":[]}').messages == ()


def _with_message(message: str) -> bytes:
    return (
        '{"object":"whatsapp_business_account","entry":[{"changes":[{"field":"messages",'
        '"value":{"metadata":{"phone_number_id":"9"},"messages":[' + message + "]}}]}]}"
    ).encode()


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b'{"object":"page","entry":[]}', "object"),
        (b'{"object":"whatsapp_business_account","entry":{}}', "entry"),
        (b'{"object":"whatsapp_business_account","entry":[7]}', "entry[0]"),
        (
            b'{"object":"whatsapp_business_account","entry":[{"changes":[{"value":{}}]}]}',
            "entry[0].changes[0].value.metadata",
        ),
        (_with_message("null"), "entry[0].changes[0].value.messages[0]"),
        (
            _with_message('{"id":"w","from":"1","timestamp":"1","type":"text"}'),
            "entry[0].changes[0].value.messages[0].text",
        ),
        (
            _with_message('{"id":"w","from":"1","timestamp":"1","type":"text","text":{"body":5}}'),
            "entry[0].changes[0].value.messages[0].text.body",
        ),
        (
            _with_message('{"id":"w","from":"1","timestamp":"soon","type":"text"}'),
            "entry[0].changes[0].value.messages[0].timestamp",
        ),
        (
            _with_message('{"id":"w","from":"1","timestamp":"99999999999999999999","type":"text"}'),
            "entry[0].changes[0].value.messages[0].timestamp",
        ),
        (
            _with_message('{"from":"1","timestamp":"1","type":"text","text":{"body":"x"}}'),
            "entry[0].changes[0].value.messages[0].id",
        ),
        # Past Python's int-from-string limit (4300 digits): a ValueError
        # of its own, not the payload's field error, before the review fix.
        (
            _with_message('{"id":"w","from":"1","timestamp":"' + "9" * 5000 + '","type":"text"}'),
            "entry[0].changes[0].value.messages[0].timestamp",
        ),
        # An integer JSON number too large for a float (OverflowError before
        # the review fix).
        (
            _with_message(
                '{"id":"w","from":"1","timestamp":"1","type":"location",'
                '"location":{"latitude":1' + "0" * 400 + ',"longitude":1}}'
            ),
            "entry[0].changes[0].value.messages[0].location.latitude",
        ),
        (
            _with_message(
                '{"id":"w","from":"1","timestamp":"1","type":"location",'
                '"location":{"latitude":"north","longitude":1}}'
            ),
            "entry[0].changes[0].value.messages[0].location.latitude",
        ),
        (
            _with_message(
                '{"id":"w","from":"1","timestamp":"1","type":"image","image":{"mime_type":"image/png"}}'
            ),
            "entry[0].changes[0].value.messages[0].image.id",
        ),
    ],
)
def test_a_wrong_shape_is_invalid_argument_naming_the_field(raw: bytes, field: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        parse_webhook(raw)
    assert raised.value.reason == WEBHOOK_PAYLOAD_INVALID
    assert [v.field for v in raised.value.violations] == [field]


def test_a_lone_surrogate_in_a_text_becomes_the_replacement_character() -> None:
    # JSON may escape half of a surrogate pair ("\\ud83d" alone); Python
    # keeps it as is, and every later encode to UTF-8 (fingerprints, the
    # stores) failed on it: a poison message retried until dead-lettered.
    raw = _with_message(
        '{"id":"w","from":"1","timestamp":"1","type":"text","text":{"body":"hi \\ud83d!"}}'
    )
    (message,) = parse_webhook(raw).messages
    assert message.content.text == "hi \ufffd!"
    message.content.text.encode()  # valid UTF-8 from here on

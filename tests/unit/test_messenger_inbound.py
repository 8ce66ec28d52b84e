"""Messenger Platform webhooks (documented payloads under tests/fixtures) as typed values."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from adapters.channels.messenger import (
    MessengerInbound,
    MessengerInboundMessage,
    MessengerReceipt,
    parse_webhook,
)
from adapters.channels.meta import WEBHOOK_PAYLOAD_INVALID, Skipped
from chat_service.domain.content import LocationContent, MediaContent, MessageContent
from chat_service.domain.enums import Channel, DeliveryStatus, MessageType
from chat_service.domain.errors import InvalidArgument
from chat_service.domain.webhooks import WebhookCall

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "webhooks" / "messenger"
PAGE_ID = "682498302938465"
PSID = "1254477777772919"
SENT_AT = datetime(2016, 3, 23, 0, 25, 52, 478000, tzinfo=UTC)  # 1458692752478 ms
WATERMARK = datetime(2016, 3, 22, 17, 47, 36, 253000, tzinfo=UTC)  # 1458668856253 ms


def fixture(name: str) -> bytes:
    return (FIXTURES / f"{name}.json").read_bytes()


def inbound(
    mid: str, kind: str, content: MessageContent, **extra: object
) -> MessengerInboundMessage:
    return MessengerInboundMessage(
        platform_message_id=mid,
        account_id=PAGE_ID,
        user_id=PSID,
        sent_at=SENT_AT,
        kind=kind,
        content=content,
        **extra,  # type: ignore[arg-type]
    )


def media(kind: MessageType, url: str) -> MessageContent:
    return MessageContent(type=kind, media=MediaContent(url=url, type=""))


EXPECTED_MESSAGES: dict[str, tuple[MessengerInboundMessage, ...]] = {
    "text_message": (inbound("m_TEXT1", "text", MessageContent.of_text("hello, world!")),),
    "quick_reply": (
        inbound("m_QR1", "quick_reply", MessageContent.of_text("Red"), reply_payload="COLOR_RED"),
    ),
    "reply_to_message": (
        inbound(
            "m_REPLY1",
            "text",
            MessageContent.of_text("this one"),
            reply_to_message_id="m_OUTBOUND1",
        ),
    ),
    "image_attachment": (
        inbound(
            "m_IMG1",
            "attachment.image",
            media(MessageType.IMAGE, "https://scontent.xx.fbcdn.net/v/image.jpg"),
        ),
    ),
    "audio_attachment": (
        inbound(
            "m_AUD1",
            "attachment.audio",
            media(MessageType.AUDIO, "https://cdn.fbsbx.com/v/audio.mp4"),
        ),
    ),
    "video_attachment": (
        inbound(
            "m_VID1",
            "attachment.video",
            media(MessageType.VIDEO, "https://video.xx.fbcdn.net/v/video.mp4"),
        ),
    ),
    "file_attachment": (
        inbound(
            "m_FILE1",
            "attachment.file",
            media(MessageType.FILE, "https://cdn.fbsbx.com/v/invoice.pdf"),
        ),
    ),
    # One message per attachment, ids stable across redeliveries.
    "two_image_attachments": (
        inbound(
            "m_IMG2",
            "attachment.image",
            media(MessageType.IMAGE, "https://scontent.xx.fbcdn.net/v/a.jpg"),
        ),
        inbound(
            "m_IMG2#1",
            "attachment.image",
            media(MessageType.IMAGE, "https://scontent.xx.fbcdn.net/v/b.jpg"),
        ),
    ),
    "location_attachment": (
        inbound(
            "m_LOC1",
            "attachment.location",
            MessageContent(
                type=MessageType.LOCATION,
                location=LocationContent(37.483307, -122.148981, address="Pin"),
            ),
        ),
    ),
    "fallback_attachment": (
        inbound(
            "m_FB1",
            "attachment.fallback",
            MessageContent.of_text("[unsupported Messenger attachment: fallback]"),
            supported=False,
        ),
    ),
    "postback": (
        inbound(
            "m_PB1", "postback", MessageContent.of_text("Get Started"), reply_payload="GET_STARTED"
        ),
    ),
}


@pytest.mark.parametrize("name", sorted(EXPECTED_MESSAGES))
def test_each_documented_message_parses_to_its_typed_value(name: str) -> None:
    parsed = parse_webhook(fixture(name))
    assert parsed.receipts == ()
    assert parsed.skipped == ()
    assert parsed.messages == EXPECTED_MESSAGES[name]


def test_the_pages_own_echo_is_skipped() -> None:
    parsed = parse_webhook(fixture("message_echo"))
    assert parsed.messages == ()
    assert parsed.skipped == (
        Skipped("entry[0].messaging[0]", "an echo of the page's own message"),
    )


def test_delivery_and_read_receipts_carry_their_watermark() -> None:
    assert parse_webhook(fixture("message_delivered")).receipts == (
        MessengerReceipt(PAGE_ID, PSID, DeliveryStatus.DELIVERED, WATERMARK, ("m_OUTBOUND1",)),
    )
    assert parse_webhook(fixture("message_read")).receipts == (
        MessengerReceipt(PAGE_ID, PSID, DeliveryStatus.READ, WATERMARK),
    )


def test_every_fixture_is_covered() -> None:
    names = {path.stem for path in FIXTURES.glob("*.json")}
    assert names == set(EXPECTED_MESSAGES) | {"message_echo", "message_delivered", "message_read"}


def _event(body: str) -> bytes:
    return ('{"object":"page","entry":[{"id":"1","messaging":[' + body + "]}]}").encode()


_WHO = '"sender":{"id":"2"},"recipient":{"id":"1"},"timestamp":1458692752478'


def test_a_message_with_neither_text_nor_attachments_is_kept_as_unsupported() -> None:
    (message,) = parse_webhook(_event("{" + _WHO + ',"message":{"mid":"m_NEW"}}')).messages
    assert (message.platform_message_id, message.kind, message.supported) == (
        "m_NEW",
        "unknown",
        False,
    )


def test_a_postback_without_mid_gets_a_stable_key_and_other_events_are_skipped() -> None:
    parsed = parse_webhook(
        _event(
            "{" + _WHO + ',"postback":{"title":"Menu","payload":"MENU"}},'
            "{" + _WHO + ',"optin":{"ref":"x"}}'
        )
    )
    assert [m.platform_message_id for m in parsed.messages] == ["postback:2:1458692752478"]
    assert parsed.messages[0].reply_payload == "MENU"
    assert parsed.skipped == (
        Skipped("entry[0].messaging[1]", "not a message, postback or receipt"),
    )


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b'{"object":"whatsapp_business_account","entry":[]}', "object"),
        (b'{"object":"page","entry":[{"messaging":{}}]}', "entry[0].messaging"),
        (
            _event('{"recipient":{"id":"1"},"timestamp":1,"message":{"mid":"m","text":"x"}}'),
            "entry[0].messaging[0].sender",
        ),
        (_event("{" + _WHO + ',"message":{"text":"x"}}'), "entry[0].messaging[0].message.mid"),
        (
            _event("{" + _WHO + ',"message":{"mid":"m","text":5}}'),
            "entry[0].messaging[0].message.text",
        ),
        (
            _event("{" + _WHO + ',"message":{"mid":"m","is_echo":"yes"}}'),
            "entry[0].messaging[0].message.is_echo",
        ),
        (
            _event("{" + _WHO + ',"message":{"mid":"m","attachments":[{"payload":{}}]}}'),
            "entry[0].messaging[0].message.attachments[0].type",
        ),
        (
            _event(
                '{"sender":{"id":"2"},"recipient":{"id":"1"},"timestamp":"x","message":{"mid":"m","text":"x"}}'
            ),
            "entry[0].messaging[0].timestamp",
        ),
        (_event("{" + _WHO + ',"postback":{}}'), "entry[0].messaging[0].postback"),
        (
            _event("{" + _WHO + ',"read":{"watermark":null}}'),
            "entry[0].messaging[0].read.watermark",
        ),
        (
            _event("{" + _WHO + ',"delivery":{"watermark":1,"mids":[3]}}'),
            "entry[0].messaging[0].delivery.mids[0]",
        ),
    ],
)
def test_a_wrong_shape_is_invalid_argument_naming_the_field(raw: bytes, field: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        parse_webhook(raw)
    assert raised.value.reason == WEBHOOK_PAYLOAD_INVALID
    assert [v.field for v in raised.value.violations] == [field]


def test_an_attachment_url_that_does_not_split_is_unsupported_not_a_crash() -> None:
    # urlsplit raises ValueError on a bracketed host it cannot read: the
    # call was refused INTERNAL at the edge before the review fix.
    raw = _event(
        "{" + _WHO + ',"message":{"mid":"m_BAD","attachments":[{"type":"image",'
        '"payload":{"url":"https://[::1/cat.jpg"}}]}}'
    )
    call = WebhookCall(tenant_id="t", channel=Channel.MESSENGER, body=raw, content_type="")
    (message,) = MessengerInbound().parse(call).messages
    assert not message.supported
    assert message.extra["media_url"] == "https://[::1/cat.jpg"


def test_a_shared_link_keeps_the_text_the_user_typed() -> None:
    # A URL shared with a Page comes as the user's text plus a `fallback`
    # attachment, the link's preview (messages webhook reference: "A common
    # example of a 'fallback' is when a user shares a URL with a Page").
    # The text is the message; it was lost to an "unsupported" placeholder.
    raw = _event(
        "{" + _WHO + ',"message":{"mid":"m_LINK","text":"look: https://example.com/a",'
        '"attachments":[{"type":"fallback","payload":{"url":"https://example.com/a",'
        '"title":"Example"}}]}}'
    )
    (message,) = parse_webhook(raw).messages
    assert (message.platform_message_id, message.kind) == ("m_LINK", "text")
    assert message.supported
    assert message.content == MessageContent.of_text("look: https://example.com/a")

"""The request fingerprint is stored with every message and compared with a
retry's: the digest of a request must never change, however it is computed."""

from __future__ import annotations

from datetime import UTC, datetime

from chat_service.domain.content import (
    Button,
    CarouselCard,
    LocationContent,
    MediaContent,
    MessageContent,
    QuickReply,
)
from chat_service.domain.enums import ButtonType, Channel, MessageType, Priority
from chat_service.domain.fingerprint import request_fingerprint
from chat_service.domain.model import ChannelMetadata, InboundMessage, ProcessingHints


def test_a_plain_request_keeps_its_digest() -> None:
    plain = InboundMessage(
        tenant_id="acme",
        message_id="m-1",
        conversation_id="",
        user_id="u-1",
        channel=Channel.WEB,
        content=MessageContent.of_text("h\u00e9llo"),
    )

    assert request_fingerprint(plain) == (
        "373d93aeb1b85a91366193ccababd2e500d3b172352462f26cfe4dd1a6e9b966"
    )


def test_a_request_with_every_kind_of_field_keeps_its_digest() -> None:
    rich = InboundMessage(
        tenant_id="acme",
        message_id="m-2",
        conversation_id="c-9",
        user_id="u-2",
        channel=Channel.WHATSAPP,
        content=MessageContent(
            type=MessageType.CAROUSEL,
            text="pick one",
            language="fr",
            media=MediaContent(url="https://x/y.png", type="image/png", size_bytes=12),
            location=LocationContent(latitude=1.5, longitude=-2.25, accuracy_meters=3),
            quick_replies=(QuickReply("A", "a"),),
            buttons=(Button(ButtonType.POSTBACK, "B", payload="b"),),
            cards=(
                CarouselCard("card", buttons=(Button(ButtonType.URL, "open", url="https://x"),)),
            ),
        ),
        session_id="s-1",
        timestamp=datetime(2026, 11, 25, 8, 0, 0, 123456, tzinfo=UTC),
        channel_metadata=ChannelMetadata(
            platform_user_id="p",
            thread_id="t",
            additional_data={"k": [1, 2.5, {"z": None, "a": True}], "\u00fc": "\u00df"},
        ),
        processing_hints=ProcessingHints(
            priority=Priority.HIGH,
            expected_response_type=MessageType.TEXT,
            bypass_automation=True,
        ),
    )

    assert request_fingerprint(rich) == (
        "c149b8062f80ec415603beb95467c1aafc459b3b8f47086c789c5ed609da8582"
    )


def test_the_message_id_and_tenant_are_not_part_of_it() -> None:
    def message(tenant_id: str, message_id: str) -> InboundMessage:
        return InboundMessage(
            tenant_id=tenant_id,
            message_id=message_id,
            conversation_id="c",
            user_id="u",
            channel=Channel.SMS,
            content=MessageContent.of_text("hi"),
        )

    assert request_fingerprint(message("a", "m-1")) == request_fingerprint(message("b", "m-2"))

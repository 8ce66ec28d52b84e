"""MessageContent <-> its stored document.

Apart from the conversation codecs because content is stored on its own too
(an idempotency record's engine response, SQLite's content column) and is
the part of the shape that grows with every new message kind. The
conventions are serialization's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from chat_service.domain.content import (
    Button,
    CarouselCard,
    LocationContent,
    MediaContent,
    MessageContent,
    QuickReply,
)
from chat_service.domain.enums import ButtonType, MessageType
from chat_service.domain.serialization import (
    Document,
    enum_value,
    optional,
    optional_enum,
    present_fields,
    tuple_of,
    without_defaults,
)


def content_to_dict(content: MessageContent) -> Document:
    return without_defaults(
        content,
        {
            "type": enum_value(content.type),
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
        type=optional_enum(MessageType, data.get("type")),
        **present_fields(
            data,
            text=str,
            language=str,
            media=optional(_media_from_dict),
            location=optional(_location_from_dict),
            quick_replies=tuple_of(_quick_reply_from_dict),
            buttons=tuple_of(_button_from_dict),
            cards=tuple_of(_card_from_dict),
        ),
    )


def _media_to_dict(media: MediaContent) -> Document:
    return without_defaults(
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
        **present_fields(data, size_bytes=int, alt_text=str, thumbnail_url=str),
    )


def _location_to_dict(location: LocationContent) -> Document:
    return without_defaults(
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
        **present_fields(data, accuracy_meters=optional(int), address=str),
    )


def _quick_reply_to_dict(reply: QuickReply) -> Document:
    return without_defaults(
        reply,
        {"title": reply.title, "payload": reply.payload, "content_type": reply.content_type},
    )


def _quick_reply_from_dict(data: Mapping[str, Any]) -> QuickReply:
    return QuickReply(
        title=str(data["title"]),
        payload=str(data["payload"]),
        **present_fields(data, content_type=str),
    )


def _button_to_dict(button: Button) -> Document:
    return without_defaults(
        button,
        {
            "type": enum_value(button.type),
            "title": button.title,
            "payload": button.payload,
            "url": button.url,
        },
    )


def _button_from_dict(data: Mapping[str, Any]) -> Button:
    return Button(
        type=optional_enum(ButtonType, data.get("type")),
        title=str(data["title"]),
        **present_fields(data, payload=str, url=str),
    )


def _card_to_dict(card: CarouselCard) -> Document:
    return without_defaults(
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
        **present_fields(data, subtitle=str, image_url=str, buttons=tuple_of(_button_from_dict)),
    )

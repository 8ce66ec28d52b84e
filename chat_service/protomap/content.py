"""Mapping of message content (chatbot.chat.v1.MessageContent and its parts).

Nothing here validates: an inbound message is mapped as sent, and the domain
validator names whatever is wrong. Only the contract's documented defaults
for empty fields are applied (an empty `language` is "en", an empty quick
reply `content_type` is "text").
"""

from __future__ import annotations

from chatbot.chat.v1 import content_pb2

from chat_service.domain.content import (
    Button,
    CarouselCard,
    LocationContent,
    MediaContent,
    MessageContent,
    QuickReply,
)
from chat_service.protomap.enums import (
    button_type_from_proto,
    button_type_to_proto,
    message_type_from_proto,
    message_type_to_proto,
)

_DEFAULT_LANGUAGE = "en"
_DEFAULT_QUICK_REPLY_CONTENT_TYPE = "text"

# ------------------------------------------------------------- proto -> domain


def message_content_from_proto(proto: content_pb2.MessageContent) -> MessageContent:
    return MessageContent(
        type=message_type_from_proto(proto.type),
        text=proto.text,
        language=proto.language or _DEFAULT_LANGUAGE,
        media=media_from_proto(proto.media) if proto.HasField("media") else None,
        location=location_from_proto(proto.location) if proto.HasField("location") else None,
        quick_replies=tuple(quick_reply_from_proto(item) for item in proto.quick_replies),
        buttons=tuple(button_from_proto(item) for item in proto.buttons),
        cards=tuple(carousel_card_from_proto(item) for item in proto.cards),
    )


def media_from_proto(proto: content_pb2.MediaContent) -> MediaContent:
    return MediaContent(
        url=proto.url,
        type=proto.type,
        size_bytes=proto.size_bytes,
        alt_text=proto.alt_text,
        thumbnail_url=proto.thumbnail_url,
    )


def location_from_proto(proto: content_pb2.LocationContent) -> LocationContent:
    return LocationContent(
        latitude=proto.latitude,
        longitude=proto.longitude,
        accuracy_meters=proto.accuracy_meters if proto.HasField("accuracy_meters") else None,
        address=proto.address,
    )


def quick_reply_from_proto(proto: content_pb2.QuickReply) -> QuickReply:
    return QuickReply(
        title=proto.title,
        payload=proto.payload,
        content_type=proto.content_type or _DEFAULT_QUICK_REPLY_CONTENT_TYPE,
    )


def button_from_proto(proto: content_pb2.Button) -> Button:
    return Button(
        type=button_type_from_proto(proto.type),
        title=proto.title,
        payload=proto.payload,
        url=proto.url,
    )


def carousel_card_from_proto(proto: content_pb2.CarouselCard) -> CarouselCard:
    return CarouselCard(
        title=proto.title,
        subtitle=proto.subtitle,
        image_url=proto.image_url,
        buttons=tuple(button_from_proto(item) for item in proto.buttons),
    )


# ------------------------------------------------------------- domain -> proto


def message_content_to_proto(content: MessageContent) -> content_pb2.MessageContent:
    proto = content_pb2.MessageContent(
        type=message_type_to_proto(content.type),
        text=content.text,
        language=content.language,
        quick_replies=[quick_reply_to_proto(item) for item in content.quick_replies],
        buttons=[button_to_proto(item) for item in content.buttons],
        cards=[carousel_card_to_proto(item) for item in content.cards],
    )
    if content.media is not None:
        proto.media.CopyFrom(media_to_proto(content.media))
    if content.location is not None:
        proto.location.CopyFrom(location_to_proto(content.location))
    return proto


def media_to_proto(media: MediaContent) -> content_pb2.MediaContent:
    return content_pb2.MediaContent(
        url=media.url,
        type=media.type,
        size_bytes=media.size_bytes,
        alt_text=media.alt_text,
        thumbnail_url=media.thumbnail_url,
    )


def location_to_proto(location: LocationContent) -> content_pb2.LocationContent:
    proto = content_pb2.LocationContent(
        latitude=location.latitude,
        longitude=location.longitude,
        address=location.address,
    )
    if location.accuracy_meters is not None:
        proto.accuracy_meters = location.accuracy_meters
    return proto


def quick_reply_to_proto(reply: QuickReply) -> content_pb2.QuickReply:
    return content_pb2.QuickReply(
        title=reply.title, payload=reply.payload, content_type=reply.content_type
    )


def button_to_proto(button: Button) -> content_pb2.Button:
    return content_pb2.Button(
        type=button_type_to_proto(button.type),
        title=button.title,
        payload=button.payload,
        url=button.url,
    )


def carousel_card_to_proto(card: CarouselCard) -> content_pb2.CarouselCard:
    return content_pb2.CarouselCard(
        title=card.title,
        subtitle=card.subtitle,
        image_url=card.image_url,
        buttons=[button_to_proto(item) for item in card.buttons],
    )

"""What a message carries: the one content model for every channel."""

from __future__ import annotations

from dataclasses import dataclass

from chat_service.domain.enums import ButtonType, MessageType


@dataclass(frozen=True, slots=True)
class MediaContent:
    url: str
    type: str  # MIME type
    size_bytes: int = 0
    alt_text: str = ""
    thumbnail_url: str = ""


@dataclass(frozen=True, slots=True)
class LocationContent:
    latitude: float
    longitude: float
    accuracy_meters: int | None = None
    address: str = ""


@dataclass(frozen=True, slots=True)
class QuickReply:
    title: str
    payload: str
    content_type: str = "text"


@dataclass(frozen=True, slots=True)
class Button:
    type: ButtonType | None  # None: unspecified on the wire, rejected by validation
    title: str
    payload: str = ""
    url: str = ""


@dataclass(frozen=True, slots=True)
class CarouselCard:
    title: str
    subtitle: str = ""
    image_url: str = ""
    buttons: tuple[Button, ...] = ()


@dataclass(frozen=True, slots=True)
class MessageContent:
    type: MessageType | None  # None: unspecified on the wire, rejected by validation
    text: str = ""
    language: str = "en"
    media: MediaContent | None = None
    location: LocationContent | None = None
    quick_replies: tuple[QuickReply, ...] = ()
    buttons: tuple[Button, ...] = ()
    cards: tuple[CarouselCard, ...] = ()

    @classmethod
    def of_text(cls, text: str, language: str = "en") -> MessageContent:
        return cls(type=MessageType.TEXT, text=text, language=language)

"""The rules of a MessageContent, element by element.

What each message type must and may carry, and the limits of its text,
media, location, quick replies, buttons and cards (content_limits.py). The
same rules hold for an end user's message and for a bot engine's reply;
validation.py is where they are applied to either.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from chat_service.domain.content import (
    Button,
    CarouselCard,
    LocationContent,
    MediaContent,
    MessageContent,
    QuickReply,
)
from chat_service.domain.content_limits import (
    ALLOWED_MIME_TYPES,
    DEFAULT_LANGUAGE,
    DEFAULT_QUICK_REPLY_CONTENT_TYPE,
    E164_PATTERN,
    LANGUAGE_PATTERN,
    MAX_ADDRESS_LENGTH,
    MAX_ALT_TEXT_LENGTH,
    MAX_BUTTON_TITLE_LENGTH,
    MAX_BUTTONS,
    MAX_CARD_BUTTONS,
    MAX_CARD_SUBTITLE_LENGTH,
    MAX_CARD_TITLE_LENGTH,
    MAX_CARDS,
    MAX_LATITUDE,
    MAX_LONGITUDE,
    MAX_MEDIA_SIZE_BYTES,
    MAX_PAYLOAD_LENGTH,
    MAX_QUICK_REPLIES,
    MAX_QUICK_REPLY_TITLE_LENGTH,
    MAX_TEXT_LENGTH,
    MEDIA_MESSAGE_TYPES,
    MIME_TYPES_BY_MESSAGE_TYPE,
    MIN_CARDS,
    MIN_LATITUDE,
    MIN_LONGITUDE,
    QUICK_REPLY_CONTENT_TYPES,
)
from chat_service.domain.enums import ButtonType, MessageType
from chat_service.domain.field_checks import FieldChecker
from chat_service.domain.text import normalize_text, quote

_ALL_TYPES = frozenset(MessageType)


@dataclass(frozen=True, slots=True)
class _PartRule:
    """Which message types need a part of MessageContent, and which allow it."""

    field: str
    required_on: frozenset[MessageType]
    allowed_on: frozenset[MessageType]
    required_description: str


# content.proto, MessageContent.type: what each message type is made of.
_PART_RULES: tuple[_PartRule, ...] = (
    _PartRule("text", frozenset({MessageType.TEXT}), _ALL_TYPES, "is required for TEXT messages"),
    _PartRule("media", MEDIA_MESSAGE_TYPES, MEDIA_MESSAGE_TYPES, "is required for {type} messages"),
    _PartRule(
        "location",
        frozenset({MessageType.LOCATION}),
        frozenset({MessageType.LOCATION}),
        "is required for LOCATION messages",
    ),
    _PartRule(
        "quick_replies",
        frozenset({MessageType.QUICK_REPLY}),
        _ALL_TYPES,
        "must have at least 1 quick reply for QUICK_REPLY messages",
    ),
    _PartRule(
        "cards",
        frozenset({MessageType.CAROUSEL}),
        frozenset({MessageType.CAROUSEL}),
        f"must have {MIN_CARDS} to {MAX_CARDS} cards for CAROUSEL messages, got 0",
    ),
)


def check_content(check: FieldChecker, content: MessageContent) -> MessageContent:
    """Collect the content's violations; return it normalized (meaningful
    only when none were found)."""
    kind = content.type
    if kind is None:
        check.fail("type", "is required")
    else:
        _check_parts(check, content, kind)

    # The length first: normalizing megabytes only to refuse them would
    # cost real CPU time per call.
    text = content.text
    if len(content.text) > MAX_TEXT_LENGTH:
        check.length("text", content.text, maximum=MAX_TEXT_LENGTH)
    elif len(text := normalize_text(content.text)) > MAX_TEXT_LENGTH:  # NFC can lengthen
        check.fail("text", f"must be at most {MAX_TEXT_LENGTH} characters once normalized")
    elif kind is MessageType.TEXT and content.text and not text:
        check.fail("text", "must contain more than white space and control characters")

    if content.language and not LANGUAGE_PATTERN.fullmatch(content.language):
        check.fail(
            "language",
            f"must be an ISO 639-1 code of two lowercase letters, got {quote(content.language)}",
        )
    if content.media is not None:
        _check_media(check.nested("media."), content.media, kind)
    if content.location is not None:
        _check_location(check.nested("location."), content.location)

    # Past its maximum a list is refused as a whole; only the items within
    # it are checked, so that a huge list cannot make a huge error.
    check.count(
        "quick_replies", content.quick_replies, maximum=MAX_QUICK_REPLIES, noun="quick replies"
    )
    for index, reply in enumerate(content.quick_replies[:MAX_QUICK_REPLIES]):
        _check_quick_reply(check.nested(f"quick_replies[{index}]."), reply)
    check.count("buttons", content.buttons, maximum=MAX_BUTTONS, noun="buttons")
    for index, button in enumerate(content.buttons[:MAX_BUTTONS]):
        _check_button(check.nested(f"buttons[{index}]."), button)
    if kind is MessageType.CAROUSEL:
        check.count("cards", content.cards, maximum=MAX_CARDS, noun="cards")
    for index, card in enumerate(content.cards[:MAX_CARDS]):
        _check_card(check.nested(f"cards[{index}]."), card)

    if len(content.quick_replies) > MAX_QUICK_REPLIES:
        return content  # refused above; not worth normalizing
    language = content.language or DEFAULT_LANGUAGE
    quick_replies = content.quick_replies
    if not all(reply.content_type for reply in quick_replies):
        quick_replies = tuple(
            dataclasses.replace(
                reply, content_type=reply.content_type or DEFAULT_QUICK_REPLY_CONTENT_TYPE
            )
            for reply in quick_replies
        )
    if (
        text == content.text
        and language == content.language
        and quick_replies is content.quick_replies
    ):
        return content  # already normal (most are): nothing to rebuild
    return dataclasses.replace(content, text=text, language=language, quick_replies=quick_replies)


def _check_parts(check: FieldChecker, content: MessageContent, kind: MessageType) -> None:
    for rule in _PART_RULES:
        present = bool(getattr(content, rule.field))
        if kind in rule.required_on and not present:
            check.fail(rule.field, rule.required_description.format(type=kind.name))
        elif kind not in rule.allowed_on and present:
            allowed = type_names(rule.allowed_on)
            check.fail(rule.field, f"is only allowed on {allowed} messages, not {kind.name}")


def type_names(types: frozenset[MessageType]) -> str:
    """`types` as error texts list them: "TEXT, IMAGE and FILE", in enum order."""
    names = [t.name for t in MessageType if t in types]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _check_media(check: FieldChecker, media: MediaContent, kind: MessageType | None) -> None:
    check.url("url", media.url, required=True)
    fitting = (
        MIME_TYPES_BY_MESSAGE_TYPE.get(kind, ALLOWED_MIME_TYPES) if kind else ALLOWED_MIME_TYPES
    )
    if not media.type:
        check.fail("type", "is required")
    elif media.type not in ALLOWED_MIME_TYPES:
        allowed = ", ".join(sorted(ALLOWED_MIME_TYPES))
        check.fail("type", f"must be one of {allowed}, got {quote(media.type)}")
    elif media.type not in fitting and kind is not None:
        check.fail(
            "type",
            f"{media.type} does not fit {kind.name} messages; use {', '.join(sorted(fitting))}",
        )
    if not 0 <= media.size_bytes <= MAX_MEDIA_SIZE_BYTES:
        check.fail(
            "size_bytes", f"must be 0 to {MAX_MEDIA_SIZE_BYTES} (50 MiB), got {media.size_bytes}"
        )
    check.length("alt_text", media.alt_text, maximum=MAX_ALT_TEXT_LENGTH)
    check.url("thumbnail_url", media.thumbnail_url)


def _check_location(check: FieldChecker, location: LocationContent) -> None:
    for field, value, low, high in (
        ("latitude", location.latitude, MIN_LATITUDE, MAX_LATITUDE),
        ("longitude", location.longitude, MIN_LONGITUDE, MAX_LONGITUDE),
    ):
        # Written as "not within" so that NaN, which fails every comparison,
        # is rejected too (as are the infinities).
        if not low <= value <= high:
            check.fail(field, f"must be {low:g} to {high:g}, got {value}")
    if location.accuracy_meters is not None and location.accuracy_meters < 0:
        check.fail("accuracy_meters", f"must be at least 0, got {location.accuracy_meters}")
    check.length("address", location.address, maximum=MAX_ADDRESS_LENGTH)


def _check_quick_reply(check: FieldChecker, reply: QuickReply) -> None:
    check.length("title", reply.title, required=True, maximum=MAX_QUICK_REPLY_TITLE_LENGTH)
    check.length("payload", reply.payload, required=True, maximum=MAX_PAYLOAD_LENGTH)
    if reply.content_type and reply.content_type not in QUICK_REPLY_CONTENT_TYPES:
        allowed = ", ".join(sorted(QUICK_REPLY_CONTENT_TYPES))
        check.fail("content_type", f"must be one of {allowed}, got {quote(reply.content_type)}")


def _check_button(check: FieldChecker, button: Button) -> None:
    if button.type is None:
        check.fail("type", "is required")
    check.length("title", button.title, required=True, maximum=MAX_BUTTON_TITLE_LENGTH)
    if button.type is ButtonType.PHONE:
        if not E164_PATTERN.fullmatch(button.payload):
            check.fail(
                "payload",
                f"must be an E.164 number like +14155550123, got {quote(button.payload)}",
            )
    else:
        # Bounded for every type, not only POSTBACK: it is sent back verbatim.
        check.length(
            "payload",
            button.payload,
            required=button.type is ButtonType.POSTBACK,
            maximum=MAX_PAYLOAD_LENGTH,
        )
    check.url("url", button.url, required=button.type is ButtonType.URL)


def _check_card(check: FieldChecker, card: CarouselCard) -> None:
    check.length("title", card.title, required=True, maximum=MAX_CARD_TITLE_LENGTH)
    check.length("subtitle", card.subtitle, maximum=MAX_CARD_SUBTITLE_LENGTH)
    check.url("image_url", card.image_url)
    check.count("buttons", card.buttons, maximum=MAX_CARD_BUTTONS, noun="buttons")
    for index, button in enumerate(card.buttons[:MAX_CARD_BUTTONS]):
        _check_button(check.nested(f"buttons[{index}]."), button)

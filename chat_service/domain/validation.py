"""The rules of an end user's message, as the contract's comments state them.

proto/chatbot/chat/v1/{chat_service,content,resources}.proto document every
limit below; this module is where they are enforced, on every inbound path
(SendMessage, streams, webhooks) and on the bot engine's replies.

Validation reports every broken rule at once, each under its path in the
request (`content.quick_replies[2].title`), so that a caller fixes a request
in one round trip. A valid message comes back normalized (see
normalize_text); nothing else is rewritten.
"""

from __future__ import annotations

import dataclasses
import json
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from chat_service.domain.channels import rules_for
from chat_service.domain.content import (
    Button,
    CarouselCard,
    LocationContent,
    MediaContent,
    MessageContent,
    QuickReply,
)
from chat_service.domain.enums import ButtonType, MessageType
from chat_service.domain.errors import FieldViolation, InvalidArgument
from chat_service.domain.identifiers import (
    MAX_MESSAGE_ID_LENGTH,
    MAX_SESSION_ID_LENGTH,
    MAX_USER_ID_LENGTH,
    MESSAGE_ID_PATTERN,
    conversation_id_problem,
    has_control,
    identifier_problem,
)
from chat_service.domain.model import ChannelMetadata, InboundMessage, JsonValue
from chat_service.domain.text import normalize_text, quote

# ------------------------------------------------------------------ limits

MAX_TEXT_LENGTH = 4096  # Unicode code points
LANGUAGE_PATTERN = re.compile(r"[a-z]{2}")  # ISO 639-1
DEFAULT_LANGUAGE = "en"

MAX_URL_LENGTH = 2048  # every URL field
MAX_MEDIA_URL_LENGTH = MAX_URL_LENGTH
MAX_MEDIA_SIZE_BYTES = 52_428_800  # 50 MiB
MAX_ALT_TEXT_LENGTH = 500
IMAGE_MIME_TYPES = frozenset({"image/jpeg", "image/png", "image/gif"})
VIDEO_MIME_TYPES = frozenset({"video/mp4"})
AUDIO_MIME_TYPES = frozenset({"audio/mpeg"})
FILE_MIME_TYPES = IMAGE_MIME_TYPES | VIDEO_MIME_TYPES | AUDIO_MIME_TYPES | {"application/pdf"}
# The MIME types each media message type takes.
MIME_TYPES_BY_MESSAGE_TYPE: Mapping[MessageType, frozenset[str]] = {
    MessageType.IMAGE: IMAGE_MIME_TYPES,
    MessageType.VIDEO: VIDEO_MIME_TYPES,
    MessageType.AUDIO: AUDIO_MIME_TYPES,
    MessageType.FILE: FILE_MIME_TYPES,
}
ALLOWED_MIME_TYPES = FILE_MIME_TYPES

MIN_LATITUDE, MAX_LATITUDE = -90.0, 90.0
MIN_LONGITUDE, MAX_LONGITUDE = -180.0, 180.0
MAX_ADDRESS_LENGTH = 500

MAX_QUICK_REPLIES = 10
MAX_QUICK_REPLY_TITLE_LENGTH = 20
MAX_PAYLOAD_LENGTH = 1000
QUICK_REPLY_CONTENT_TYPES = frozenset({"text", "user_phone_number", "user_email"})
DEFAULT_QUICK_REPLY_CONTENT_TYPE = "text"

MAX_BUTTONS = 3
MAX_BUTTON_TITLE_LENGTH = 20
E164_PATTERN = re.compile(r"\+[1-9][0-9]{1,14}")

MIN_CARDS, MAX_CARDS = 1, 10
MAX_CARD_TITLE_LENGTH = 80
MAX_CARD_SUBTITLE_LENGTH = 80
MAX_CARD_BUTTONS = 3

MAX_METADATA_FIELD_LENGTH = 255
MAX_ADDITIONAL_DATA_BYTES = 16 * 1024  # compact JSON, UTF-8
MAX_ADDITIONAL_DATA_DEPTH = 8  # additional_data itself is level 1

MEDIA_MESSAGE_TYPES = frozenset(MIME_TYPES_BY_MESSAGE_TYPE)
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

_METADATA_STRING_FIELDS = ("platform_message_id", "platform_user_id", "thread_id", "workspace_id")


# --------------------------------------------------------------- public API


def validate_inbound(msg: InboundMessage, *, field_prefix: str = "") -> InboundMessage:
    """Check an end user's message against every rule of SendMessageRequest.

    Returns the message with its content normalized; raises InvalidArgument
    naming every violation, each field as `field_prefix` + its path (the
    prefix is used verbatim, e.g. "message.").
    """
    check = _Checker(field_prefix)
    if msg.conversation_id:
        problem = conversation_id_problem(msg.conversation_id)
        if problem:
            check.fail("conversation_id", problem)
    if msg.message_id:
        check.length("message_id", msg.message_id, maximum=MAX_MESSAGE_ID_LENGTH)
        if not MESSAGE_ID_PATTERN.fullmatch(msg.message_id):
            check.fail("message_id", "must contain only letters, digits and . _ : @ -")
    check.identifier("user_id", msg.user_id, required=True, maximum=MAX_USER_ID_LENGTH)
    check.identifier("session_id", msg.session_id, maximum=MAX_SESSION_ID_LENGTH)
    if msg.channel is None:
        check.fail("channel", "is required")
    content = _check_content(check.nested("content."), msg.content)
    if msg.channel is not None and msg.content.type is not None:
        rules = rules_for(msg.channel)
        if msg.content.type not in rules.inbound_types:
            channel = msg.channel.value
            check.fail(
                "content.type",
                f"{channel} users cannot send {msg.content.type.name} messages;"
                f" {channel} accepts {_names(rules.inbound_types)}",
            )
    _check_channel_metadata(check.nested("channel_metadata."), msg.channel_metadata)
    # processing_hints: every value its types allow is valid.
    check.raise_if_any()
    return dataclasses.replace(msg, content=content)


def validate_content(content: MessageContent, *, field_prefix: str) -> MessageContent:
    """Check one MessageContent (an inbound one, or a bot engine's reply).

    Fields are named `field_prefix` + their path inside the content, e.g.
    "response_contents[0]." + "quick_replies[1].title". Returns the content
    normalized; raises InvalidArgument naming every violation.
    """
    check = _Checker(field_prefix)
    normalized = _check_content(check, content)
    check.raise_if_any()
    return normalized


# ------------------------------------------------------------------ checker


class _Checker:
    """Collects violations; `nested` shares the list under a longer prefix."""

    def __init__(self, prefix: str, violations: list[FieldViolation] | None = None) -> None:
        self._prefix = prefix
        self._violations = violations if violations is not None else []

    def nested(self, path: str) -> _Checker:
        return _Checker(self._prefix + path, self._violations)

    def fail(self, field: str, description: str) -> None:
        self._violations.append(FieldViolation(self._prefix + field, description))

    def identifier(self, field: str, value: str, *, maximum: int, required: bool = False) -> None:
        if required and not value:
            self.fail(field, "is required")
        elif problem := identifier_problem(value, maximum=maximum):
            self.fail(field, problem)

    def length(self, field: str, value: str, *, maximum: int, required: bool = False) -> None:
        if required and not value:
            self.fail(field, "is required")
        elif len(value) > maximum:
            self.fail(field, f"must be at most {maximum} characters, got {len(value)}")

    def count(self, field: str, items: Sequence[object], *, maximum: int, noun: str) -> None:
        if len(items) > maximum:
            self.fail(field, f"must have at most {maximum} {noun}, got {len(items)}")

    def url(self, field: str, value: str, *, required: bool = False) -> None:
        if not value:
            if required:
                self.fail(field, "is required")
            return
        if len(value) > MAX_URL_LENGTH:
            self.fail(field, f"must be at most {MAX_URL_LENGTH} characters, got {len(value)}")
            return
        problem = _url_problem(value)
        if problem:
            self.fail(field, problem)

    def raise_if_any(self) -> None:
        if self._violations:
            raise InvalidArgument(self._violations)


def _url_problem(url: str) -> str | None:
    if any(ch.isspace() or unicodedata.category(ch) == "Cc" for ch in url):
        return "must be an absolute http or https URL without white space"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsing the port is what raises on a bad one
    except ValueError:
        return "must be an absolute http or https URL"
    if parts.scheme not in ("http", "https"):
        return "must be an absolute http or https URL"
    if not parts.hostname:
        return "must be an absolute http or https URL with a host"
    return None


# ------------------------------------------------------------------ content


def _check_content(check: _Checker, content: MessageContent) -> MessageContent:
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
    return dataclasses.replace(
        content,
        text=text,
        language=content.language or DEFAULT_LANGUAGE,
        quick_replies=tuple(
            dataclasses.replace(
                reply, content_type=reply.content_type or DEFAULT_QUICK_REPLY_CONTENT_TYPE
            )
            for reply in content.quick_replies
        ),
    )


def _check_parts(check: _Checker, content: MessageContent, kind: MessageType) -> None:
    for rule in _PART_RULES:
        present = bool(getattr(content, rule.field))
        if kind in rule.required_on and not present:
            check.fail(rule.field, rule.required_description.format(type=kind.name))
        elif kind not in rule.allowed_on and present:
            allowed = _names(rule.allowed_on)
            check.fail(rule.field, f"is only allowed on {allowed} messages, not {kind.name}")


def _names(types: frozenset[MessageType]) -> str:
    names = [t.name for t in MessageType if t in types]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _check_media(check: _Checker, media: MediaContent, kind: MessageType | None) -> None:
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


def _check_location(check: _Checker, location: LocationContent) -> None:
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


def _check_quick_reply(check: _Checker, reply: QuickReply) -> None:
    check.length("title", reply.title, required=True, maximum=MAX_QUICK_REPLY_TITLE_LENGTH)
    check.length("payload", reply.payload, required=True, maximum=MAX_PAYLOAD_LENGTH)
    if reply.content_type and reply.content_type not in QUICK_REPLY_CONTENT_TYPES:
        allowed = ", ".join(sorted(QUICK_REPLY_CONTENT_TYPES))
        check.fail("content_type", f"must be one of {allowed}, got {quote(reply.content_type)}")


def _check_button(check: _Checker, button: Button) -> None:
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


def _check_card(check: _Checker, card: CarouselCard) -> None:
    check.length("title", card.title, required=True, maximum=MAX_CARD_TITLE_LENGTH)
    check.length("subtitle", card.subtitle, maximum=MAX_CARD_SUBTITLE_LENGTH)
    check.url("image_url", card.image_url)
    check.count("buttons", card.buttons, maximum=MAX_CARD_BUTTONS, noun="buttons")
    for index, button in enumerate(card.buttons[:MAX_CARD_BUTTONS]):
        _check_button(check.nested(f"buttons[{index}]."), button)


# ---------------------------------------------------------------- metadata


def _check_channel_metadata(check: _Checker, metadata: ChannelMetadata) -> None:
    for field in _METADATA_STRING_FIELDS:
        check.identifier(field, getattr(metadata, field), maximum=MAX_METADATA_FIELD_LENGTH)
    problem = _additional_data_problem(metadata.additional_data)
    if problem:
        check.fail("additional_data", problem)


def _additional_data_problem(data: Mapping[str, JsonValue]) -> str | None:
    # Depth first: it bounds the recursion the serializer does next.
    depth = _depth(data, MAX_ADDITIONAL_DATA_DEPTH + 1)
    if depth > MAX_ADDITIONAL_DATA_DEPTH:
        return f"must be nested at most {MAX_ADDITIONAL_DATA_DEPTH} levels deep"
    # Keys become field names in MongoDB, where NUL is refused outright.
    bad_key = _control_key(data)
    if bad_key is not None:
        return f"keys must not contain control characters, got {quote(bad_key)}"
    try:
        encoded = json.dumps(
            data, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_json_default
        ).encode("utf-8")
    except (TypeError, ValueError) as error:
        return f"must be JSON-serializable: {error}"
    if len(encoded) > MAX_ADDITIONAL_DATA_BYTES:
        return f"must be at most {MAX_ADDITIONAL_DATA_BYTES} bytes as JSON, got {len(encoded)}"
    return None


def _control_key(value: object) -> str | None:
    """The first object key in `value` holding a control character (depth
    already bounded by the caller)."""
    if isinstance(value, Mapping):
        for key, child in value.items():
            if has_control(str(key)):
                return str(key)
            if (found := _control_key(child)) is not None:
                return found
    elif isinstance(value, Sequence) and not isinstance(value, str):
        for child in value:
            if (found := _control_key(child)) is not None:
                return found
    return None


def _depth(value: object, cap: int) -> int:
    """Levels of objects and lists in `value` (a scalar is 0), counted up to `cap`."""
    if isinstance(value, str) or not isinstance(value, Mapping | Sequence):
        return 0
    if cap <= 1:
        return 1
    children = value.values() if isinstance(value, Mapping) else value
    return 1 + max((_depth(child, cap - 1) for child in children), default=0)


def _json_default(value: object) -> object:
    # Struct values arrive as any Mapping or Sequence, not only dict and list.
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not a JSON value")

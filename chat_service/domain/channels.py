"""How a bot reply is adapted to what its channel can show.

A reply is stored and delivered as the channel shows it (resources.proto,
Message.content): what the platform cannot show natively (channel_rules.py)
is turned into text, and text too long for one platform message is split.
Nothing the user could act on or read is dropped: titles, subtitles, URLs,
phone numbers and addresses all survive as text. (Payloads are machine data
the user never sees; the engine's original reply keeps them.)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

from chat_service.domain.channel_rules import ChannelRules, rules_for
from chat_service.domain.content import (
    Button,
    CarouselCard,
    LocationContent,
    MediaContent,
    MessageContent,
)
from chat_service.domain.content_limits import MEDIA_MESSAGE_TYPES
from chat_service.domain.enums import ButtonType, Channel, MessageType
from chat_service.domain.text import normalize_text, split_text

_T = MessageType

# Google's documented cross-platform Maps URL: opens the app or the web.
MAPS_URL = "https://www.google.com/maps/search/?api=1&query={latitude},{longitude}"

_MEDIA_LABELS: Mapping[MessageType, str] = {
    _T.IMAGE: "Image",
    _T.FILE: "File",
    _T.AUDIO: "Audio",
    _T.VIDEO: "Video",
}


def format_for_channel(content: MessageContent, channel: Channel) -> tuple[MessageContent, ...]:
    """Adapt one (valid, normalized) bot reply to what `channel` can show.

    Returns the platform messages to send, in order. Content the channel
    shows as it is comes back untouched. Otherwise what the channel cannot
    show natively becomes text appended to the reply's text (a carousel a
    numbered list of its cards, media its description and URL, a location
    its address and a maps link, buttons their links or numbered options to
    reply with), and text longer than the channel's limit is split at
    paragraph, sentence or word boundaries. Media, location, cards, buttons
    and quick replies ride on the last message only. Every message returned
    satisfies validate_content and the channel's rules.
    """
    rules = rules_for(channel)
    if _fits(content, rules):
        return (content,)
    return _Adaptation(content, rules).messages()


def _fits(content: MessageContent, rules: ChannelRules) -> bool:
    has_attachments = _has_attachments(content)
    text_limit = rules.max_attached_text_length if has_attachments else rules.max_text_length
    return (
        content.type in rules.outbound_types
        and len(content.text) <= text_limit
        and len(content.quick_replies) <= rules.max_quick_replies
        and _buttons_fit(content.buttons, rules)
        and len(content.cards) <= rules.max_cards
        and all(_buttons_fit(card.buttons, rules) for card in content.cards)
        and (rules.quick_replies_with_buttons or not (content.quick_replies and content.buttons))
    )


def _buttons_fit(buttons: tuple[Button, ...], rules: ChannelRules) -> bool:
    return len(buttons) <= rules.max_buttons and all(
        button.type in rules.button_types for button in buttons
    )


def _has_attachments(content: MessageContent) -> bool:
    return bool(
        content.media
        or content.location
        or content.cards
        or content.buttons
        or content.quick_replies
    )


class _Adaptation:
    """One reply being adapted: what stays native, and the text it gains."""

    def __init__(self, content: MessageContent, rules: ChannelRules) -> None:
        self._content = content
        self._rules = rules
        self._blocks: list[str] = [content.text]  # paragraphs of the new text
        self._links: list[str] = []  # URL and PHONE buttons as "Title: target"
        self._options: list[str] = []  # answers the user now has to type

        self._media = content.media
        if self._media is not None and content.type not in rules.outbound_types:
            self._blocks.append(_describe_media(content.type, self._media))
            self._media = None
        self._location = content.location
        if self._location is not None and _T.LOCATION not in rules.outbound_types:
            self._blocks.append(_describe_location(self._location))
            self._location = None
        self._cards = content.cards
        if self._cards and (
            _T.CAROUSEL not in rules.outbound_types or len(self._cards) > rules.max_cards
        ):
            self._blocks.append(self._list_cards(self._cards))
            self._cards = ()
        self._cards = tuple(
            dataclasses.replace(card, buttons=self._native_buttons(card.buttons, card.title))
            for card in self._cards
        )
        self._quick_replies = content.quick_replies
        if len(self._quick_replies) > rules.max_quick_replies:
            # All or nothing: a choice shown half as chips and half as text
            # would read as two different questions.
            self._quick_replies_as_text()
        self._buttons = self._native_buttons(content.buttons)
        if self._buttons and self._quick_replies and not rules.quick_replies_with_buttons:
            # One of the two must become text: keep what defines the message.
            if content.type is _T.QUICK_REPLY:
                self._buttons_as_text(self._buttons)
                self._buttons = ()
            else:
                self._quick_replies_as_text()

    def messages(self) -> tuple[MessageContent, ...]:
        rules = self._rules
        language = self._content.language
        last = MessageContent(
            type=self._final_type(),
            language=language,
            media=self._media,
            location=self._location,
            quick_replies=self._quick_replies,
            buttons=self._buttons,
            cards=self._cards,
        )
        text = normalize_text("\n\n".join(block for block in self._text_blocks() if block))
        parts = list(split_text(text, rules.max_text_length))
        if _has_attachments(last) and parts and len(parts[-1]) > rules.max_attached_text_length:
            # The attachments take the end of the text (where the question
            # usually is); the rest of that part goes out just before.
            tail = split_text(parts[-1], rules.max_attached_text_length)[-1]
            parts[-1:] = [parts[-1][: -len(tail)].rstrip(), tail]
        head = tuple(MessageContent.of_text(part, language=language) for part in parts[:-1])
        return (*head, dataclasses.replace(last, text=parts[-1] if parts else ""))

    def _text_blocks(self) -> Iterable[str]:
        yield from self._blocks
        yield "\n".join(self._links)
        if self._options:
            numbered = (f"{number}. {title}" for number, title in enumerate(self._options, 1))
            yield "\n".join(("Reply with one of:", *numbered))

    def _final_type(self) -> MessageType:
        """The original type while its defining element is still shown, else TEXT."""
        kind = self._content.type
        still_shown = {
            _T.LOCATION: self._location is not None,
            _T.QUICK_REPLY: bool(self._quick_replies),
            _T.CAROUSEL: bool(self._cards),
            **dict.fromkeys(MEDIA_MESSAGE_TYPES, self._media is not None),
        }
        return kind if kind is not None and still_shown.get(kind, True) else _T.TEXT

    def _list_cards(self, cards: tuple[CarouselCard, ...]) -> str:
        listed = []
        for number, card in enumerate(cards, 1):
            lines = [f"{number}. {card.title}", card.subtitle]
            lines += (_link(button) for button in card.buttons)
            self._options += (
                f"{button.title} ({card.title})"
                for button in card.buttons
                if button.type is ButtonType.POSTBACK
            )
            listed.append("\n".join(line for line in lines if line))
        return "\n\n".join(listed)

    def _native_buttons(self, buttons: tuple[Button, ...], card: str = "") -> tuple[Button, ...]:
        """The buttons the channel shows; the others become text."""
        rules = self._rules
        native = tuple(button for button in buttons if button.type in rules.button_types)
        if len(native) > rules.max_buttons:
            native = ()
        self._buttons_as_text([button for button in buttons if button not in native], card)
        return native

    def _buttons_as_text(self, buttons: Iterable[Button], card: str = "") -> None:
        """POSTBACK buttons become options, URL and PHONE buttons links.

        SHARE has nothing to show as text: forwarding a message is something
        every text channel lets the user do anyway.
        """
        for button in buttons:
            if button.type is ButtonType.POSTBACK:
                self._options.append(f"{button.title} ({card})" if card else button.title)
            elif link := _link(button):
                self._links.append(f"{card}: {link}" if card else link)

    def _quick_replies_as_text(self) -> None:
        self._options[:0] = [reply.title for reply in self._quick_replies]
        self._quick_replies = ()


def _describe_media(kind: MessageType | None, media: MediaContent) -> str:
    label = _MEDIA_LABELS.get(kind, "File") if kind is not None else "File"
    if media.alt_text:
        return f"{label}: {media.alt_text}\n{media.url}"
    return f"{label}: {media.url}"


def _link(button: Button) -> str:
    """A URL or PHONE button as a line of text; "" for other types."""
    if button.type is ButtonType.URL:
        return f"{button.title}: {button.url}"
    if button.type is ButtonType.PHONE:
        return f"{button.title}: {button.payload}"
    return ""


def _describe_location(location: LocationContent) -> str:
    where = location.address or f"{location.latitude!r}, {location.longitude!r}"
    if location.accuracy_meters:
        where += f" (within {location.accuracy_meters} m)"
    link = MAPS_URL.format(latitude=repr(location.latitude), longitude=repr(location.longitude))
    return f"Location: {where}\n{link}"

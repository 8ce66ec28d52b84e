"""WhatsApp Cloud API, outbound: a stored reply as `POST /{phone-number-id}/messages`.

Payloads from the Cloud API's message references
(https://developers.facebook.com/documentation/business-messaging/whatsapp/messages/send-messages):
text (`text.body`, at most 4096 characters), media by `link` (image, audio,
video, document; captions at most 1024 characters, none on audio),
`location`, and `interactive` messages: reply buttons (at most 3, titles at
most 20 characters, ids at most 256; a text, image, video or document
header; body at most 1024; .../messages/interactive-reply-buttons-messages)
and lists (at most 10 rows, row titles at most 24 characters and ids at most
200, a button label of at most 20; a text header only;
.../messages/interactive-list-messages). The answer names the message
`messages[0].id` (a "wamid"), which status webhooks refer to.

The content arrives adapted by format_for_channel (domain/channel_rules.py:
WhatsApp's limits): only the mapping is left here. Quick replies become
reply buttons when there are at most 3 of them, else a list; a reply's own
POSTBACK buttons become reply buttons.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

from adapters.channels.graph_api import GraphApi, path_segment
from adapters.channels.meta_outbound import MetaSender
from adapters.channels.outbound import (
    MessageLookup,
    Pacer,
    Payload,
    SenderFactory,
    options_text,
    unsendable,
)
from chat_service.domain.content import Button, LocationContent, MediaContent, MessageContent
from chat_service.domain.enums import ButtonType, Channel
from chat_service.ports import (
    ChannelSender,
    Clock,
    ConnectionDirectory,
    ConversationStore,
    DeliveryError,
)

MAX_BODY_LENGTH = 1024  # interactive body and media captions
MAX_REPLY_BUTTONS = 3
MAX_BUTTON_ID_LENGTH = 256
MAX_LIST_ROWS = 10
MAX_ROW_TITLE_LENGTH = 24
MAX_ROW_ID_LENGTH = 200
# The list's button is required (1 to 20 characters); the content model has
# nothing to fill it with, so one short word it is.
LIST_BUTTON_LABEL = "Options"

# What WhatsApp shows natively, by MIME type: images are JPEG or PNG only,
# documents PDF among others, audio MP3 and video MP4 (".../business-phone-
# numbers/media", "Supported media types"). Anything else (a GIF) goes as
# a link in text, which WhatsApp previews.
_KIND_BY_MIME: Mapping[str, str] = {
    "image/jpeg": "image",
    "image/png": "image",
    "video/mp4": "video",
    "audio/mpeg": "audio",
    "application/pdf": "document",
}
_CAPTIONED = frozenset({"image", "video", "document"})
_HEADER_KINDS = frozenset({"image", "video", "document"})  # reply buttons only


class WhatsAppSender(MetaSender):
    channel = Channel.WHATSAPP
    token_field = "access_token"  # noqa: S105 (the name of the secret, not one)

    def __init__(
        self,
        *,
        api: GraphApi,
        directory: ConnectionDirectory,
        store: MessageLookup,
        clock: Clock,
        pacer: Pacer,
    ) -> None:
        super().__init__(api=api, directory=directory, store=store, clock=clock)
        self._pacer = pacer

    def payloads(self, content: MessageContent, recipient: str) -> list[Payload]:
        return whatsapp_payloads(content, recipient)

    def path(self, account_id: str) -> str:
        return f"{path_segment(account_id)}/messages"

    def platform_id(self, answer: dict[str, Any]) -> str:
        messages = answer.get("messages")
        first = messages[0] if isinstance(messages, list) and messages else None
        wamid = first.get("id") if isinstance(first, dict) else None
        if not isinstance(wamid, str) or not wamid:
            # Meta took the message: a retry could send it twice.
            raise DeliveryError(
                "the Cloud API accepted the message but named no message id", retryable=False
            )
        return wamid

    def pacer_for(self, payload: Payload) -> Pacer:
        return self._pacer


def whatsapp_sender_factory(api: GraphApi, *, rate_per_second: float) -> SenderFactory:
    """What bootstrap hands wiring: builds the sender once the connection
    directory exists. One pacer for the process: WHATSAPP_RATE_PER_SECOND per
    business phone number."""
    pacer = Pacer(rate_per_second)

    def build(
        directory: ConnectionDirectory, store: ConversationStore, clock: Clock
    ) -> ChannelSender:
        return WhatsAppSender(api=api, directory=directory, store=store, clock=clock, pacer=pacer)

    return build


# ------------------------------------------------------------------ mapping


def whatsapp_payloads(content: MessageContent, to: str) -> list[Payload]:
    """The Cloud API calls that send `content` to the user `to`, in order."""
    if content.cards:
        raise unsendable("WhatsApp cannot show a carousel (format_for_channel makes it text)")
    if content.buttons and content.quick_replies:
        raise unsendable("WhatsApp shows one interactive element per message, not two")
    base: Payload = {"messaging_product": "whatsapp", "recipient_type": "individual", "to": to}
    text = content.text
    media = content.media
    kind = _media_kind(media) if media is not None else None
    choices = _choices(content)
    bodies: list[Payload] = []
    if media is not None and kind is None:
        # Not a type WhatsApp shows: its link, which WhatsApp previews; on
        # its own before an interactive message, whose body is short.
        if choices is not None:
            bodies.append(_text(_media_link(media)))
        else:
            text = "\n\n".join(part for part in (text, _media_link(media)) if part)
        media = None

    if choices is not None:
        interactive, titles = choices
        if media is not None and kind in _HEADER_KINDS and interactive["type"] == "button":
            interactive["header"] = {"type": kind, kind: _media_object(media, kind)}
        elif media is not None and kind is not None:
            bodies.append({"type": kind, kind: _media_object(media, kind)})
        if content.location is not None:
            bodies.append(_location(content.location))
        interactive["body"] = {"text": text or options_text(titles, MAX_BODY_LENGTH)}
        bodies.append({"type": "interactive", "interactive": interactive})
    elif media is not None and kind is not None:
        media_object = _media_object(media, kind)
        if text and kind in _CAPTIONED:
            media_object["caption"] = text
        elif text:
            bodies.append(_text(text))
        bodies.append({"type": kind, kind: media_object})
    elif content.location is not None:
        if text:
            bodies.append(_text(text))
        bodies.append(_location(content.location))
    else:
        if not text:
            raise unsendable("the message has nothing WhatsApp can show")
        bodies.append(_text(text))
    return [base | body for body in bodies]


def _text(text: str) -> Payload:
    # WhatsApp renders a preview of the first URL only when asked to.
    return {"type": "text", "text": {"body": text, "preview_url": "://" in text}}


def _location(location: LocationContent) -> Payload:
    body: Payload = {"latitude": location.latitude, "longitude": location.longitude}
    if location.address:
        body["address"] = location.address
    return {"type": "location", "location": body}


def _media_kind(media: MediaContent) -> str | None:
    return _KIND_BY_MIME.get(media.type)


def _media_object(media: MediaContent, kind: str) -> Payload:
    body: Payload = {"link": media.url}
    if kind == "document" and (filename := _filename(media.url)):
        body["filename"] = filename
    return body


def _media_link(media: MediaContent) -> str:
    return f"{media.alt_text}\n{media.url}" if media.alt_text else media.url


def _filename(url: str) -> str:
    name = PurePosixPath(unquote(urlsplit(url).path)).name
    return name[:240] if "." in name else ""


def _choices(content: MessageContent) -> tuple[Payload, list[str]] | None:
    """The interactive element of `content` (without its body) and the
    titles it offers, or None when it offers none."""
    if content.buttons:
        return _reply_buttons([_button_choice(button) for button in content.buttons])
    replies = content.quick_replies
    if not replies:
        return None
    choices = [(reply.payload or reply.title, reply.title) for reply in replies]
    if len(choices) <= MAX_REPLY_BUTTONS:
        return _reply_buttons(choices)
    return _list(choices)


def _button_choice(button: Button) -> tuple[str, str]:
    if button.type is not ButtonType.POSTBACK:
        kind = button.type.value if button.type is not None else "unspecified"
        raise unsendable(f"WhatsApp reply buttons only send a reply, not a {kind} button")
    return (button.payload or button.title, button.title)


def _reply_buttons(choices: Sequence[tuple[str, str]]) -> tuple[Payload, list[str]]:
    if len(choices) > MAX_REPLY_BUTTONS:
        raise unsendable(f"WhatsApp shows at most {MAX_REPLY_BUTTONS} reply buttons")
    buttons = [
        {"type": "reply", "reply": {"id": _choice_id(key, MAX_BUTTON_ID_LENGTH), "title": title}}
        for key, title in choices
    ]
    return {"type": "button", "action": {"buttons": buttons}}, [title for _, title in choices]


def _list(choices: Sequence[tuple[str, str]]) -> tuple[Payload, list[str]]:
    if len(choices) > MAX_LIST_ROWS:
        raise unsendable(f"WhatsApp lists show at most {MAX_LIST_ROWS} rows")
    rows = [
        {"id": _choice_id(key, MAX_ROW_ID_LENGTH), "title": title[:MAX_ROW_TITLE_LENGTH]}
        for key, title in choices
    ]
    action = {"button": LIST_BUTTON_LABEL, "sections": [{"rows": rows}]}
    return {"type": "list", "action": action}, [title for _, title in choices]


def _choice_id(payload: str, limit: int) -> str:
    # The id comes back in the user's reply (the inbound reply_payload): cut
    # short, the bot would get a payload it never sent.
    if len(payload) > limit:
        raise unsendable(f"a reply payload longer than {limit} characters cannot go to WhatsApp")
    return payload

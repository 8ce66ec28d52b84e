"""Messenger Platform, outbound: a stored reply through the Send API.

`POST /{page-id}/messages` with `recipient.id` (the user's PSID),
`messaging_type: RESPONSE` (a reply within the 24-hour window) and one
`message` (https://developers.facebook.com/docs/messenger-platform/reference/send-api);
the Page access token goes as the bearer header (graph_api.py says why).
The answer's `message_id` is what delivery and read webhooks refer to
(through their watermarks).

A `message` is either text (at most 2000 characters) or one attachment:
media by URL (`image`, `audio`, `video`, `file`), a button template (text
at most 640, 1 to 3 `postback`, `web_url` or `phone_number` buttons) or a
generic template (at most 10 elements, titles and subtitles at most 80, up
to 3 buttons each); `quick_replies` (at most 13, titles at most 20) ride on
any of them (https://developers.facebook.com/docs/messenger-platform/send-messages/quick-replies,
.../send-messages/template/button, .../send-messages/template/generic).
Text and an attachment are therefore two messages: the text goes first.

Rate limits per Page: 300 calls per second for text, 10 for audio and video
(https://developers.facebook.com/documentation/business-messaging/messenger-platform/overview/rate-limiting).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

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
from chat_service.domain.content import (
    Button,
    CarouselCard,
    MediaContent,
    MessageContent,
    QuickReply,
)
from chat_service.domain.enums import ButtonType, Channel, MessageType
from chat_service.ports import (
    ChannelSender,
    Clock,
    ConnectionDirectory,
    ConversationStore,
    DeliveryError,
)

MAX_TEXT_LENGTH = 2000
MAX_TEMPLATE_TEXT_LENGTH = 640
MAX_QUICK_REPLIES = 13
TEXT_CALLS_PER_SECOND = 300.0
AUDIO_VIDEO_CALLS_PER_SECOND = 10.0

_ATTACHMENT_TYPES: Mapping[MessageType, str] = {
    MessageType.IMAGE: "image",
    MessageType.AUDIO: "audio",
    MessageType.VIDEO: "video",
    MessageType.FILE: "file",
}
_SLOW_ATTACHMENTS = frozenset({"audio", "video"})


class MessengerSender(MetaSender):
    channel = Channel.MESSENGER
    token_field = "page_access_token"  # noqa: S105 (the name of the secret, not one)

    def __init__(
        self,
        *,
        api: GraphApi,
        directory: ConnectionDirectory,
        store: MessageLookup,
        clock: Clock,
        text_pacer: Pacer | None = None,
        media_pacer: Pacer | None = None,
    ) -> None:
        super().__init__(api=api, directory=directory, store=store, clock=clock)
        self._text_pacer = text_pacer or Pacer(TEXT_CALLS_PER_SECOND)
        self._media_pacer = media_pacer or Pacer(AUDIO_VIDEO_CALLS_PER_SECOND)

    def payloads(self, content: MessageContent, recipient: str) -> list[Payload]:
        return messenger_payloads(content, recipient)

    def path(self, account_id: str) -> str:
        return f"{path_segment(account_id)}/messages"

    def platform_id(self, answer: dict[str, Any]) -> str:
        mid = answer.get("message_id")
        if not isinstance(mid, str) or not mid:
            raise DeliveryError(
                "the Send API accepted the message but named no message id", retryable=False
            )
        return mid

    def pacer_for(self, payload: Payload) -> Pacer:
        attachment = payload["message"].get("attachment")
        if isinstance(attachment, dict) and attachment.get("type") in _SLOW_ATTACHMENTS:
            return self._media_pacer
        return self._text_pacer


def messenger_sender_factory(api: GraphApi) -> SenderFactory:
    """What bootstrap hands wiring (see whatsapp_sender_factory)."""
    text_pacer = Pacer(TEXT_CALLS_PER_SECOND)
    media_pacer = Pacer(AUDIO_VIDEO_CALLS_PER_SECOND)

    def build(
        directory: ConnectionDirectory, store: ConversationStore, clock: Clock
    ) -> ChannelSender:
        return MessengerSender(
            api=api,
            directory=directory,
            store=store,
            clock=clock,
            text_pacer=text_pacer,
            media_pacer=media_pacer,
        )

    return build


# ------------------------------------------------------------------ mapping


def messenger_payloads(content: MessageContent, psid: str) -> list[Payload]:
    """The Send API calls that send `content` to the user `psid`, in order."""
    if content.location is not None:
        raise unsendable("Messenger cannot send a location (format_for_channel makes it text)")
    if len(content.quick_replies) > MAX_QUICK_REPLIES:
        raise unsendable(f"Messenger shows at most {MAX_QUICK_REPLIES} quick replies")
    text = content.text
    messages: list[Payload] = []
    if content.buttons:
        # The button template carries the text (its question).
        if content.media is not None:
            messages.append({"attachment": _media(content.type, content.media)})
        titles = [button.title for button in content.buttons]
        template = {
            "template_type": "button",
            "text": text or options_text(titles, MAX_TEMPLATE_TEXT_LENGTH),
            "buttons": [_button(button) for button in content.buttons],
        }
        messages.append({"attachment": {"type": "template", "payload": template}})
    else:
        if text:
            messages.append({"text": text})
        if content.media is not None:
            messages.append({"attachment": _media(content.type, content.media)})
    if content.cards:
        messages.append({"attachment": _generic(content.cards)})
    if content.quick_replies:
        if not messages:  # quick replies need a message to ride on
            titles = [reply.title for reply in content.quick_replies]
            messages.append({"text": options_text(titles, MAX_TEXT_LENGTH)})
        messages[-1]["quick_replies"] = [_quick_reply(reply) for reply in content.quick_replies]
    if not messages:
        raise unsendable("the message has nothing Messenger can show")
    base: Payload = {"recipient": {"id": psid}, "messaging_type": "RESPONSE"}
    return [base | {"message": message} for message in messages]


def _media(kind: MessageType | None, media: MediaContent) -> Payload:
    attachment_type = _ATTACHMENT_TYPES.get(kind) if kind is not None else None
    return {
        "type": attachment_type or "file",
        # The URL is the bot's: nothing to save an attachment id for.
        "payload": {"url": media.url, "is_reusable": False},
    }


def _generic(cards: tuple[CarouselCard, ...]) -> Payload:
    elements: list[Payload] = []
    for card in cards:
        element: Payload = {"title": card.title}
        if card.subtitle:
            element["subtitle"] = card.subtitle
        if card.image_url:
            element["image_url"] = card.image_url
        if card.buttons:
            element["buttons"] = [_button(button) for button in card.buttons]
        elements.append(element)
    return {"type": "template", "payload": {"template_type": "generic", "elements": elements}}


def _button(button: Button) -> Payload:
    if button.type is ButtonType.POSTBACK:
        return {
            "type": "postback",
            "title": button.title,
            "payload": button.payload or button.title,
        }
    if button.type is ButtonType.URL:
        return {"type": "web_url", "title": button.title, "url": button.url}
    if button.type is ButtonType.PHONE:
        return {"type": "phone_number", "title": button.title, "payload": button.payload}
    kind = button.type.value if button.type is not None else "unspecified"
    raise unsendable(f"Messenger has no {kind} button (the share button is deprecated)")


def _quick_reply(reply: QuickReply) -> Payload:
    if reply.content_type in ("user_phone_number", "user_email"):
        # Messenger fills these from the user's profile; no title or payload.
        return {"content_type": reply.content_type}
    return {"content_type": "text", "title": reply.title, "payload": reply.payload or reply.title}

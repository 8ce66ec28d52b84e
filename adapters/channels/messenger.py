"""Messenger Platform, inbound: a verified webhook body as typed values.

Shapes (`object: page`, entry[].messaging[] events):
- messages: https://developers.facebook.com/docs/messenger-platform/reference/webhook-events/messages
  (message.mid, text, quick_reply.payload, reply_to.mid, attachments[] of
  type image/audio/video/file with payload.url; location with
  payload.coordinates.lat/long in the older reference; fallback and others)
- postbacks: https://developers.facebook.com/docs/messenger-platform/reference/webhook-events/messaging_postbacks
  (postback.title, payload, mid)
- deliveries: https://developers.facebook.com/docs/messenger-platform/reference/webhook-events/message-deliveries
  (delivery.watermark in ms, optional delivery.mids[])
- reads: https://developers.facebook.com/docs/messenger-platform/reference/webhook-events/message-reads
  (read.watermark in ms)
- echoes: https://developers.facebook.com/docs/messenger-platform/reference/webhook-events/message-echoes
  (message.is_echo: the page's own message; skipped)

Decisions:
- sender.id is the user's PSID; recipient.id is the page id, which picks the
  channel connection.
- A message with several attachments becomes one message per attachment:
  the first keeps `mid`, the next ones `mid#1`, `mid#2`..., stable across
  Meta's redeliveries, so dedup still holds.
- An attachment we do not map (fallback, template, reel...) is kept with
  `supported=False` and a text placeholder (stored as such, polite reply).
  Messenger sends no MIME type: `content.media.type` is left empty.
- A link shared with a Page comes as the user's text plus a `fallback`
  attachment (the link's preview): that is a text message.
- A postback without `mid` (older payloads) is keyed `postback:<psid>:<timestamp>`.
- A message with neither text nor attachments is kept as `unknown`, unsupported.
- Other events (optins, reactions, referrals, handovers...) are skipped with a reason.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from urllib.parse import urlsplit

from adapters.channels.meta import (
    Fields,
    Skipped,
    load_body,
    payload_error,
    unix_time,
    utf8_text,
)
from adapters.channels.meta_inbound import MetaWebhooks
from chat_service.domain.content import LocationContent, MediaContent, MessageContent
from chat_service.domain.content_limits import MIME_TYPES_BY_MESSAGE_TYPE
from chat_service.domain.enums import Channel, DeliveryStatus, MessageType
from chat_service.domain.webhooks import ParsedWebhook, PlatformMessage, PlatformStatus, WebhookCall

MESSENGER_OBJECT = "page"

_MEDIA_TYPES = {
    "image": MessageType.IMAGE,
    "audio": MessageType.AUDIO,
    "video": MessageType.VIDEO,
    "file": MessageType.FILE,
}


@dataclass(frozen=True, slots=True)
class MessengerInboundMessage:
    platform_message_id: str  # message.mid (or postback.mid): the dedup key
    account_id: str  # recipient.id, the page id: picks the channel connection
    user_id: str  # sender.id, the user's page-scoped id (PSID)
    sent_at: datetime
    kind: str  # "text", "quick_reply", "postback", "attachment.image"...
    content: MessageContent
    supported: bool = True  # False: an unmapped attachment, `content` is a placeholder
    reply_payload: str = ""  # quick_reply.payload or postback.payload
    reply_to_message_id: str = ""  # reply_to.mid


@dataclass(frozen=True, slots=True)
class MessengerReceipt:
    """Everything the page sent this user before `watermark` is delivered (or read)."""

    account_id: str
    user_id: str
    status: DeliveryStatus  # DELIVERED or READ
    watermark: datetime
    message_ids: tuple[str, ...] = ()  # delivery.mids, when Meta sends them


@dataclass(frozen=True, slots=True)
class MessengerWebhook:
    messages: tuple[MessengerInboundMessage, ...] = ()
    receipts: tuple[MessengerReceipt, ...] = ()
    skipped: tuple[Skipped, ...] = ()


def parse_webhook(raw_body: bytes) -> MessengerWebhook:
    """Parse a body whose signature was already verified; wrong shapes are INVALID_ARGUMENT."""
    body = load_body(raw_body, MESSENGER_OBJECT)
    messages: list[MessengerInboundMessage] = []
    receipts: list[MessengerReceipt] = []
    skipped: list[Skipped] = []
    for entry in body.items("entry"):
        if entry.array("standby"):
            skipped.append(Skipped(entry.at("standby"), "standby events belong to another app"))
        for event in entry.items("messaging"):
            if event.has("message"):
                parsed = _message(event)
                if isinstance(parsed, Skipped):
                    skipped.append(parsed)
                else:
                    messages.extend(parsed)
            elif event.has("postback"):
                messages.append(_postback(event))
            elif event.has("delivery") or event.has("read"):
                receipts.append(_receipt(event))
            else:
                skipped.append(Skipped(event.path, "not a message, postback or receipt"))
    return MessengerWebhook(tuple(messages), tuple(receipts), tuple(skipped))


@dataclass(frozen=True, slots=True)
class _Envelope:
    account_id: str
    user_id: str
    sent_at: datetime

    @classmethod
    def of(cls, event: Fields) -> _Envelope:
        return cls(
            account_id=event.obj("recipient").id("id"),
            user_id=event.obj("sender").id("id"),
            sent_at=_millis(event.integer("timestamp"), event.at("timestamp")),
        )

    def message(
        self,
        message_id: str,
        kind: str,
        content: MessageContent,
        *,
        supported: bool = True,
        reply_payload: str = "",
        reply_to_message_id: str = "",
    ) -> MessengerInboundMessage:
        return MessengerInboundMessage(
            platform_message_id=message_id,
            account_id=self.account_id,
            user_id=self.user_id,
            sent_at=self.sent_at,
            kind=kind,
            content=content,
            supported=supported,
            reply_payload=reply_payload,
            reply_to_message_id=reply_to_message_id,
        )


def _message(event: Fields) -> list[MessengerInboundMessage] | Skipped:
    message = event.obj("message")
    if message.flag("is_echo"):
        return Skipped(event.path, "an echo of the page's own message")
    envelope = _Envelope.of(event)
    mid = message.text("mid")
    reply_to = message.opt_obj("reply_to")
    reply_to_mid = reply_to.opt_text("mid") if reply_to is not None else ""
    quick_reply = message.opt_obj("quick_reply")
    if quick_reply is not None:
        return [
            envelope.message(
                mid,
                "quick_reply",
                MessageContent.of_text(message.opt_text("text")),
                reply_payload=quick_reply.opt_text("payload"),
                reply_to_message_id=reply_to_mid,
            )
        ]
    attachments = message.items("attachments")
    text = message.opt_text("text")
    if text and all(a.opt_text("type") == "fallback" for a in attachments):
        # A link shared with its preview (a `fallback` attachment): the
        # text holds what the user typed, link included.
        attachments = []
    if not attachments:
        if not text:  # a kind of message the reference does not document yet
            placeholder = MessageContent.of_text("[unsupported Messenger message]")
            return [envelope.message(mid, "unknown", placeholder, supported=False)]
        return [
            envelope.message(
                mid, "text", MessageContent.of_text(text), reply_to_message_id=reply_to_mid
            )
        ]
    return [
        _attachment(envelope, mid if i == 0 else f"{mid}#{i}", attachment, reply_to_mid)
        for i, attachment in enumerate(attachments)
    ]


def _attachment(
    envelope: _Envelope, message_id: str, attachment: Fields, reply_to_mid: str
) -> MessengerInboundMessage:
    kind = attachment.text("type")
    payload = attachment.opt_obj("payload")
    if kind in _MEDIA_TYPES and payload is not None and payload.has("url"):
        content = MessageContent(
            type=_MEDIA_TYPES[kind], media=MediaContent(url=payload.text("url"), type="")
        )
        return envelope.message(
            message_id, f"attachment.{kind}", content, reply_to_message_id=reply_to_mid
        )
    if kind == "location" and payload is not None and payload.has("coordinates"):
        coordinates = payload.obj("coordinates")
        location = LocationContent(
            coordinates.number("lat"),
            coordinates.number("long"),
            address=attachment.opt_text("title"),
        )
        return envelope.message(
            message_id,
            "attachment.location",
            MessageContent(type=MessageType.LOCATION, location=location),
            reply_to_message_id=reply_to_mid,
        )
    return envelope.message(
        message_id,
        f"attachment.{kind}",
        MessageContent.of_text(f"[unsupported Messenger attachment: {kind}]"),
        supported=False,
        reply_to_message_id=reply_to_mid,
    )


def _postback(event: Fields) -> MessengerInboundMessage:
    envelope = _Envelope.of(event)
    postback = event.obj("postback")
    mid = postback.opt_text("mid") or (f"postback:{envelope.user_id}:{event.integer('timestamp')}")
    title = postback.opt_text("title")
    payload = postback.opt_text("payload")
    if not title and not payload:
        raise payload_error(postback.path, "a postback needs a title or a payload")
    return envelope.message(
        mid, "postback", MessageContent.of_text(title or payload), reply_payload=payload
    )


def _receipt(event: Fields) -> MessengerReceipt:
    # Receipts carry no timestamp of their own in the reference: the watermark is the time.
    account_id = event.obj("recipient").id("id")
    user_id = event.obj("sender").id("id")
    if event.has("delivery"):
        delivery = event.obj("delivery")
        mids = tuple(
            _text_item(mid, f"{delivery.at('mids')}[{i}]")
            for i, mid in enumerate(delivery.array("mids"))
        )
        watermark = _millis(delivery.integer("watermark"), delivery.at("watermark"))
        return MessengerReceipt(account_id, user_id, DeliveryStatus.DELIVERED, watermark, mids)
    read = event.obj("read")
    watermark = _millis(read.integer("watermark"), read.at("watermark"))
    return MessengerReceipt(account_id, user_id, DeliveryStatus.READ, watermark)


def _text_item(value: object, path: str) -> str:
    if not isinstance(value, str) or not value:
        raise payload_error(path, "must be a non-empty string")
    return utf8_text(value)


def _millis(value: int, path: str) -> datetime:
    return unix_time(value // 1000, path).replace(microsecond=(value % 1000) * 1000)


# ------------------------------------------------------------ InboundChannel

# Messenger sends no MIME type with an attachment: it is read from the file
# name at the end of the attachment URL's path (Meta's CDN URLs keep it,
# e.g. ".../123_n.jpg?..."), for the types the content model takes.
_MIME_BY_EXTENSION = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".gif": "image/gif",
    ".mp4": "video/mp4",
    ".mp3": "audio/mpeg",
    ".pdf": "application/pdf",
}


class MessengerInbound(MetaWebhooks):
    """Messenger's webhook side (ports.InboundChannel and WebhookHandshake):
    the parsed body in the platform-neutral shapes of domain/webhooks.py.

    Attachments keep their URL (Meta's CDN, fetchable as it is) and get the
    MIME type their file extension names; an attachment whose type cannot
    be told, or is one the content model does not take for its kind (voice
    clips are MP4 audio), is unsupported: stored as a placeholder with its
    URL in the extra data (`media_url`), and answered politely. Delivery
    and read receipts become watermark statuses (everything sent to that
    user up to the watermark), plus the named `mids` when Meta sends them.
    """

    def __init__(self) -> None:
        super().__init__(Channel.MESSENGER)

    def parse(self, call: WebhookCall) -> ParsedWebhook:
        parsed = parse_webhook(call.body)
        return ParsedWebhook(
            messages=tuple(_platform_message(message) for message in parsed.messages),
            statuses=tuple(
                status for receipt in parsed.receipts for status in _platform_statuses(receipt)
            ),
            skipped=tuple(f"{skip.path}: {skip.reason}" for skip in parsed.skipped),
        )


def _platform_message(message: MessengerInboundMessage) -> PlatformMessage:
    extra = {"kind": message.kind}
    if message.reply_payload:
        extra["reply_payload"] = message.reply_payload
    content, supported = message.content, message.supported
    media = content.media
    if media is not None and content.type is not None:
        mime_type = _mime_type_of(media.url)
        if mime_type in MIME_TYPES_BY_MESSAGE_TYPE.get(content.type, ()):
            content = replace(content, media=replace(media, type=mime_type))
        else:
            extra["media_url"] = media.url
            content = MessageContent.of_text(f"[unsupported Messenger message: {message.kind}]")
            supported = False
    return PlatformMessage(
        account_id=message.account_id,
        platform_message_id=message.platform_message_id,
        user_id=message.user_id,
        sent_at=message.sent_at,
        content=content,
        supported=supported,
        kind=message.kind,
        reply_to_platform_id=message.reply_to_message_id,
        extra=extra,
    )


def _mime_type_of(url: str) -> str:
    try:
        path = urlsplit(url).path
    except ValueError:  # e.g. a bracketed host that is no IPv6 address
        return ""
    name = path.rpartition("/")[2]
    extension = name[name.rfind(".") :].lower() if "." in name else ""
    return _MIME_BY_EXTENSION.get(extension, "")


def _platform_statuses(receipt: MessengerReceipt) -> tuple[PlatformStatus, ...]:
    watermark = PlatformStatus(
        account_id=receipt.account_id,
        status=receipt.status,
        at=receipt.watermark,
        user_id=receipt.user_id,
        watermark=True,
    )
    if not receipt.message_ids:
        return (watermark,)
    named = PlatformStatus(
        account_id=receipt.account_id,
        status=receipt.status,
        at=receipt.watermark,
        platform_message_ids=receipt.message_ids,
        user_id=receipt.user_id,
    )
    return named, watermark

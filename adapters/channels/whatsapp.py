"""WhatsApp Cloud API, inbound: a verified webhook body as typed values.

Shapes from the `messages` webhook reference:
https://developers.facebook.com/documentation/business-messaging/whatsapp/webhooks/reference/messages
(`object: whatsapp_business_account`, entry[].changes[].value with
metadata.phone_number_id, contacts[], messages[] and statuses[]).

Decisions:
- A message type we do not map (sticker is mapped as an image; reaction,
  contacts, order, system, `unsupported`...) is NOT an error: it comes back
  with `supported=False` and a text placeholder, so it is stored as such and
  gets a polite reply, and Meta always gets its 200.
- Media (image/audio/video/document/sticker) carries the WhatsApp media id
  only: `media_id` here, `content.media.url` left empty; the id is resolved
  to a URL (Graph API `GET /{media-id}`) only when the media is needed.
- A button/list reply or template button tap is a TEXT message with the
  title the user saw; the developer payload is in `reply_payload`.
- A change whose `field` is not `messages` and a status we do not track
  ("deleted", "warning"...) are skipped, with their path and a reason.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

from adapters.channels.meta import Fields, Skipped, load_body, unix_time
from adapters.channels.meta_inbound import MetaWebhooks
from chat_service.domain.content import LocationContent, MediaContent, MessageContent
from chat_service.domain.content_limits import MAX_ALT_TEXT_LENGTH, MIME_TYPES_BY_MESSAGE_TYPE
from chat_service.domain.enums import Channel, DeliveryStatus, MessageType
from chat_service.domain.webhooks import ParsedWebhook, PlatformMessage, PlatformStatus, WebhookCall

WHATSAPP_OBJECT = "whatsapp_business_account"

_MEDIA_TYPES = {
    "image": MessageType.IMAGE,
    "sticker": MessageType.IMAGE,
    "audio": MessageType.AUDIO,
    "video": MessageType.VIDEO,
    "document": MessageType.FILE,
}
# statuses[].status values (same reference, "Status messages").
_STATUSES = {
    "sent": DeliveryStatus.SENT,
    "delivered": DeliveryStatus.DELIVERED,
    "read": DeliveryStatus.READ,
    "failed": DeliveryStatus.FAILED,
}


@dataclass(frozen=True, slots=True)
class WhatsAppInboundMessage:
    platform_message_id: str  # the wamid: the dedup key (Meta redelivers)
    account_id: str  # metadata.phone_number_id: picks the channel connection
    user_id: str  # `from`, the user's wa_id
    user_name: str  # contacts[].profile.name for that wa_id, "" if absent
    sent_at: datetime
    kind: str  # the WhatsApp type as sent: "text", "interactive.button_reply"...
    content: MessageContent
    supported: bool = True  # False: an unmapped type, `content` is a placeholder
    media_id: str = ""
    reply_payload: str = ""  # button/list reply id, template button payload
    context_message_id: str = ""  # context.id: the message this one answers


@dataclass(frozen=True, slots=True)
class WhatsAppError:
    code: int
    title: str
    message: str = ""
    details: str = ""  # error_data.details


@dataclass(frozen=True, slots=True)
class WhatsAppStatusUpdate:
    platform_message_id: str  # the wamid of OUR outbound message
    account_id: str
    recipient_id: str
    status: DeliveryStatus
    at: datetime
    errors: tuple[WhatsAppError, ...] = ()


@dataclass(frozen=True, slots=True)
class WhatsAppWebhook:
    messages: tuple[WhatsAppInboundMessage, ...] = ()
    statuses: tuple[WhatsAppStatusUpdate, ...] = ()
    skipped: tuple[Skipped, ...] = ()


def parse_webhook(raw_body: bytes) -> WhatsAppWebhook:
    """Parse a body whose signature was already verified; wrong shapes are INVALID_ARGUMENT."""
    body = load_body(raw_body, WHATSAPP_OBJECT)
    messages: list[WhatsAppInboundMessage] = []
    statuses: list[WhatsAppStatusUpdate] = []
    skipped: list[Skipped] = []
    for entry in body.items("entry"):
        for change in entry.items("changes"):
            field = change.opt_text("field") or "messages"
            if field != "messages":
                skipped.append(Skipped(change.path, f"field {field!r} is not handled"))
                continue
            value = change.obj("value")
            account_id = value.obj("metadata").id("phone_number_id")
            names = _contact_names(value)
            for message in value.items("messages"):
                messages.append(_message(message, account_id, names))
            for status in value.items("statuses"):
                parsed = _status(status, account_id)
                if isinstance(parsed, Skipped):
                    skipped.append(parsed)
                else:
                    statuses.append(parsed)
    return WhatsAppWebhook(tuple(messages), tuple(statuses), tuple(skipped))


def _contact_names(value: Fields) -> dict[str, str]:
    names: dict[str, str] = {}
    for contact in value.items("contacts"):
        profile = contact.opt_obj("profile")
        if contact.has("wa_id") and profile is not None:
            names[contact.id("wa_id")] = profile.opt_text("name")
    return names


@dataclass(frozen=True, slots=True)
class _Envelope:
    """What every message carries, whatever its type."""

    platform_message_id: str
    account_id: str
    user_id: str
    user_name: str
    sent_at: datetime
    context_message_id: str

    def message(
        self,
        kind: str,
        content: MessageContent,
        *,
        supported: bool = True,
        media_id: str = "",
        reply_payload: str = "",
    ) -> WhatsAppInboundMessage:
        return WhatsAppInboundMessage(
            platform_message_id=self.platform_message_id,
            account_id=self.account_id,
            user_id=self.user_id,
            user_name=self.user_name,
            sent_at=self.sent_at,
            kind=kind,
            content=content,
            supported=supported,
            media_id=media_id,
            reply_payload=reply_payload,
            context_message_id=self.context_message_id,
        )


def _message(message: Fields, account_id: str, names: dict[str, str]) -> WhatsAppInboundMessage:
    user_id = message.id("from")
    kind = message.text("type")
    context = message.opt_obj("context")
    envelope = _Envelope(
        platform_message_id=message.text("id"),
        account_id=account_id,
        user_id=user_id,
        user_name=names.get(user_id, ""),
        sent_at=unix_time(message.integer("timestamp"), message.at("timestamp")),
        context_message_id=context.opt_text("id") if context is not None else "",
    )
    if kind == "text":
        return envelope.message(kind, MessageContent.of_text(message.obj("text").text("body")))
    if kind in _MEDIA_TYPES:
        media = message.obj(kind)
        content = MessageContent(
            type=_MEDIA_TYPES[kind],
            text=media.opt_text("caption"),
            media=MediaContent(
                url="", type=media.opt_text("mime_type"), alt_text=media.opt_text("filename")
            ),
        )
        return envelope.message(kind, content, media_id=media.id("id"))
    if kind == "location":
        where = message.obj("location")
        address = ", ".join(p for p in (where.opt_text("name"), where.opt_text("address")) if p)
        location = LocationContent(
            where.number("latitude"), where.number("longitude"), address=address
        )
        return envelope.message(kind, MessageContent(type=MessageType.LOCATION, location=location))
    if kind == "interactive":
        interactive = message.obj("interactive")
        reply_kind = interactive.text("type")
        kind = f"interactive.{reply_kind}"
        if reply_kind in ("button_reply", "list_reply"):
            reply = interactive.obj(reply_kind)
            return envelope.message(
                kind, MessageContent.of_text(reply.text("title")), reply_payload=reply.text("id")
            )
        # nfm_reply (flows) and the like fall through to the placeholder.
    elif kind == "button":  # a quick-reply button of a template message
        button = message.obj("button")
        return envelope.message(
            kind,
            MessageContent.of_text(button.text("text")),
            reply_payload=button.opt_text("payload"),
        )
    placeholder = MessageContent.of_text(f"[unsupported WhatsApp message: {kind}]")
    return envelope.message(kind, placeholder, supported=False)


def _status(status: Fields, account_id: str) -> WhatsAppStatusUpdate | Skipped:
    name = status.text("status")
    delivery = _STATUSES.get(name)
    if delivery is None:
        return Skipped(status.path, f"status {name!r} is not tracked")
    errors = tuple(
        WhatsAppError(
            code=error.integer("code"),
            title=error.opt_text("title"),
            message=error.opt_text("message"),
            details=details.opt_text("details")
            if (details := error.opt_obj("error_data")) is not None
            else "",
        )
        for error in status.items("errors")
    )
    return WhatsAppStatusUpdate(
        platform_message_id=status.text("id"),
        account_id=account_id,
        recipient_id=status.id("recipient_id"),
        status=delivery,
        at=unix_time(status.integer("timestamp"), status.at("timestamp")),
        errors=errors,
    )


# ------------------------------------------------------------ InboundChannel


class WhatsAppInbound(MetaWebhooks):
    """WhatsApp's webhook side (ports.InboundChannel and WebhookHandshake):
    the parsed body in the platform-neutral shapes of domain/webhooks.py.

    Media: WhatsApp sends a media id and its MIME type, no URL (the file is
    fetched with the connection's access token, `GET /{media-id}` answering
    a short-lived download URL:
    https://developers.facebook.com/docs/whatsapp/cloud-api/reference/media).
    The stored media's `url` is that Graph API node, `<graph base>/<media
    id>`: an absolute https URL as the contract asks, stable, naming the
    file without fetching it; `media_id` is kept in the extra data. Its
    `type` is the MIME type WhatsApp gives, without parameters. A MIME type
    the content model does not take for that kind of message (voice notes
    in audio/ogg, stickers in image/webp, office documents) makes the
    message unsupported: stored as a placeholder with its media id and MIME
    type, and answered politely.
    """

    def __init__(self, *, graph_base_url: str) -> None:
        super().__init__(Channel.WHATSAPP)
        self._graph_base_url = graph_base_url.rstrip("/")

    def parse(self, call: WebhookCall) -> ParsedWebhook:
        parsed = parse_webhook(call.body)
        return ParsedWebhook(
            messages=tuple(self._message(message) for message in parsed.messages),
            statuses=tuple(_platform_status(status) for status in parsed.statuses),
            skipped=tuple(f"{skip.path}: {skip.reason}" for skip in parsed.skipped),
        )

    def _message(self, message: WhatsAppInboundMessage) -> PlatformMessage:
        extra = {"kind": message.kind}
        if message.reply_payload:
            extra["reply_payload"] = message.reply_payload
        content, supported = message.content, message.supported
        media = content.media
        if message.media_id and media is not None and content.type is not None:
            mime_type = media.type.partition(";")[0].strip().lower()
            extra |= {"media_id": message.media_id, "mime_type": mime_type}
            if mime_type in MIME_TYPES_BY_MESSAGE_TYPE.get(content.type, ()):
                content = replace(
                    content,
                    media=replace(
                        media,
                        url=f"{self._graph_base_url}/{message.media_id}",
                        type=mime_type,
                        alt_text=media.alt_text[:MAX_ALT_TEXT_LENGTH],
                    ),
                )
            else:
                shown = mime_type or "no MIME type"
                content = MessageContent.of_text(
                    f"[unsupported WhatsApp message: {message.kind} ({shown})]"
                )
                supported = False
        return PlatformMessage(
            account_id=message.account_id,
            platform_message_id=message.platform_message_id,
            user_id=message.user_id,
            sent_at=message.sent_at,
            content=content,
            supported=supported,
            kind=message.kind,
            user_name=message.user_name,
            reply_to_platform_id=message.context_message_id,
            extra=extra,
        )


def _platform_status(status: WhatsAppStatusUpdate) -> PlatformStatus:
    return PlatformStatus(
        account_id=status.account_id,
        status=status.status,
        at=status.at,
        platform_message_ids=(status.platform_message_id,),
        user_id=status.recipient_id,
        error="; ".join(
            f"{error.code}: {error.title}" if error.title else str(error.code)
            for error in status.errors
        ),
    )

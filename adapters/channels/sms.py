"""SMS through Twilio, inbound: incoming messages and the status callbacks
of our replies, verified (twilio.py) and read into the platform-neutral
shapes of domain/webhooks.py.

- One webhook URL per tenant (`/v1/webhooks/{tenant}/sms`), set on the
  Twilio number as "A message comes in" and sent by the SMS sender as each
  reply's `StatusCallback`: both kinds of call arrive there, form-encoded.
- Incoming messages (https://www.twilio.com/docs/messaging/guides/webhook-request):
  `MessageSid` (the message's id: the inbox key and the stored message's
  id), `From` (the user), `To` (our number: it picks the connection),
  `Body`, `NumMedia` with `MediaUrl{N}` and `MediaContentType{N}` (MMS).
  Twilio sends no time for the message: the time the service took it in
  is used (WebhookCall.received_at).
- Status callbacks (https://www.twilio.com/docs/messaging/guides/outbound-message-status-in-status-callbacks):
  `MessageSid` (ours, as the REST API named it when the reply was sent),
  `MessageStatus` queued/sending/sent/delivered/undelivered/failed/read
  (and canceled for scheduled ones), `ErrorCode` on failures, `From` (our
  number). They carry no `Body`; an incoming message carries `SmsStatus`
  `received` and no `MessageStatus`, which is how the two are told apart.
- Answer: an empty TwiML `<Response/>` (text/xml) at once; the bot's reply
  goes through the REST API later (sms_send.py), so a slow bot never
  makes Twilio time out (its webhooks wait 15 seconds).

Decisions:
- MMS: one message per media, the first with the text and the message's
  id, the next ones `{MessageSid}:{n}` (as Slack files). The SMS channel
  takes images; another media type (a video, a vCard) is stored as a
  placeholder and answered politely by the inbox worker.
- Keywords (Twilio's defaults, https://www.twilio.com/docs/messaging/tutorials/advanced-opt-out
  and https://help.twilio.com/articles/223134027): a body that is only
  STOP, STOPALL, UNSUBSCRIBE, CANCEL, END, QUIT, REVOKE or OPTOUT opts the
  number out of the connection; START, YES or UNSTOP opts it back in;
  HELP or INFO asks for help. Case and surrounding spaces or a final
  period or exclamation mark do not matter; a longer message ("stop
  that") is no keyword. The message is stored like any other (with
  `sms_keyword` in its additional_data) and reaches the bot. The opt-out
  is recorded (`apply`, run by the inbox worker before SendMessage) on the
  connection, and the sender sends nothing to an opted-out number until
  START: the bot's reply to STOP itself is not sent (FAILED, "recipient
  opted out (STOP)"). Twilio confirms STOP and START itself (Advanced
  Opt-Out, on by default for long codes) and refuses to send to a number
  that sent STOP (error 21610), so the service adds no confirmation of its
  own; HELP is answered by the bot like any message.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime

from adapters.channels.twilio import (
    EMPTY_TWIML,
    TWIML_CONTENT_TYPE,
    WEBHOOK_PAYLOAD_INVALID,
    TwilioSignatures,
    form_fields,
    parse_form,
)
from chat_service.domain.content import MediaContent, MessageContent
from chat_service.domain.enums import Channel, DeliveryStatus, MessageType
from chat_service.domain.errors import InvalidArgument
from chat_service.domain.identifiers import has_control
from chat_service.domain.webhooks import (
    ParsedWebhook,
    PlatformMessage,
    PlatformStatus,
    WebhookCall,
    body_dedup_key,
)
from chat_service.ports import Clock, ConnectionStore, OpenedConnection

OPT_OUT_KEYWORDS = frozenset(
    {"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"}
)
OPT_IN_KEYWORDS = frozenset({"START", "YES", "UNSTOP"})
HELP_KEYWORDS = frozenset({"HELP", "INFO"})
KEYWORD_STOP, KEYWORD_START, KEYWORD_HELP = "stop", "start", "help"
KEYWORD_FIELD = "sms_keyword"  # in the message's additional_data

# MMS carries at most 10 media (https://www.twilio.com/docs/messaging/guides/webhook-request,
# "Media related parameters").
MAX_MEDIA = 10
MAX_ADDRESS_LENGTH = 64  # E.164 is at most 16; "whatsapp:+1..." style prefixes fit too
MAX_URL_LENGTH = 2048

# Twilio's statuses of an outbound message, as delivery statuses. queued,
# sending and sent all mean Twilio has it (our SENT); accepted and
# scheduled come before that with a Messaging Service.
_STATUSES: Mapping[str, DeliveryStatus] = {
    "accepted": DeliveryStatus.SENT,
    "scheduled": DeliveryStatus.SENT,
    "queued": DeliveryStatus.SENT,
    "sending": DeliveryStatus.SENT,
    "sent": DeliveryStatus.SENT,
    "delivered": DeliveryStatus.DELIVERED,
    "read": DeliveryStatus.READ,
    "undelivered": DeliveryStatus.FAILED,
    "failed": DeliveryStatus.FAILED,
    "canceled": DeliveryStatus.FAILED,
}
# The statuses of an incoming message (SmsStatus on the message webhook).
_INBOUND_STATUSES = frozenset({"received", "receiving"})

_SID = re.compile(r"[A-Z]{2}[0-9a-fA-F]{32}")
_ERROR_CODE = re.compile(r"[0-9]{1,6}")
_DIGITS = re.compile(r"[0-9]{1,3}")
_KEYWORD_TRIM = " \t\r\n.!"


# ----------------------------------------------------------------- parsing


def parse_sms_webhook(raw_body: bytes, received_at: datetime) -> ParsedWebhook:
    """An incoming message or a status callback (already verified);
    INVALID_ARGUMENT for a body that is neither."""
    fields = form_fields(parse_form(raw_body))
    status = fields.get("MessageStatus", "")
    if not status and "Body" not in fields:
        status = fields.get("SmsStatus", "")
    if status and status.lower() not in _INBOUND_STATUSES:
        return _status_callback(fields, status.lower(), received_at)
    return ParsedWebhook(messages=_incoming(fields, received_at))


def keyword_of(body: str) -> str:
    """ "stop", "start" or "help" when `body` is only one of Twilio's
    keywords; "" otherwise."""
    word = body.strip(_KEYWORD_TRIM).upper()
    if word in OPT_OUT_KEYWORDS:
        return KEYWORD_STOP
    if word in OPT_IN_KEYWORDS:
        return KEYWORD_START
    if word in HELP_KEYWORDS:
        return KEYWORD_HELP
    return ""


def _status_callback(fields: Mapping[str, str], status: str, at: datetime) -> ParsedWebhook:
    sid = _sid(fields)
    ours = _address(fields, "From")  # the reply's sender: our number
    delivery_status = _STATUSES.get(status)
    if delivery_status is None:
        return ParsedWebhook(skipped=(f"MessageStatus: {status[:40]!r} is not handled",))
    error = ""
    if delivery_status is DeliveryStatus.FAILED:
        code = fields.get("ErrorCode", "").strip()
        if code and _ERROR_CODE.fullmatch(code) is None:
            raise _invalid("ErrorCode", "must be Twilio's numeric error code")
        # https://www.twilio.com/docs/api/errors/<code> says what it means.
        error = f"ErrorCode: {code}" if code else f"MessageStatus: {status}"
    return ParsedWebhook(
        statuses=(
            PlatformStatus(
                account_id=ours,
                status=delivery_status,
                at=at,
                platform_message_ids=(sid,),
                error=error,
            ),
        )
    )


def _incoming(fields: Mapping[str, str], at: datetime) -> tuple[PlatformMessage, ...]:
    sid = _sid(fields)
    user = _address(fields, "From")
    ours = _address(fields, "To")
    text = fields.get("Body", "")
    media = _media(fields)
    extra: dict[str, str] = {}
    keyword = keyword_of(text) if not media else ""
    if keyword:
        extra[KEYWORD_FIELD] = keyword

    def message(suffix: str, content: MessageContent, *, supported: bool = True) -> PlatformMessage:
        return PlatformMessage(
            account_id=ours,
            platform_message_id=sid + suffix,
            user_id=user,
            sent_at=at,
            content=content,
            supported=supported,
            kind="mms" if media else "sms",
            extra=extra,
        )

    if not media:
        if not text.strip():
            placeholder = MessageContent.of_text("[unsupported SMS message: empty]")
            return (message("", placeholder, supported=False),)
        return (message("", MessageContent.of_text(text)),)
    return tuple(
        message(
            f":{index}" if index else "",
            MessageContent(type=_media_type(item.type), text="" if index else text, media=item),
        )
        for index, item in enumerate(media)
    )


def _media(fields: Mapping[str, str]) -> list[MediaContent]:
    count = fields.get("NumMedia", "0").strip() or "0"
    if _DIGITS.fullmatch(count) is None or int(count) > MAX_MEDIA:
        raise _invalid("NumMedia", f"must be a number from 0 to {MAX_MEDIA}")
    media = []
    for index in range(int(count)):
        url = fields.get(f"MediaUrl{index}", "")
        if not url.startswith(("https://", "http://")) or len(url) > MAX_URL_LENGTH:
            raise _invalid(f"MediaUrl{index}", "must be the media's http(s) URL")
        if has_control(url) or any(char.isspace() for char in url):
            raise _invalid(f"MediaUrl{index}", "must not contain spaces or control characters")
        mime_type = fields.get(f"MediaContentType{index}", "").partition(";")[0].strip().lower()
        if not mime_type or "/" not in mime_type or len(mime_type) > 127:
            raise _invalid(f"MediaContentType{index}", "must be a MIME type like image/jpeg")
        media.append(MediaContent(url=url, type=mime_type))
    return media


def _media_type(mime_type: str) -> MessageType:
    family = mime_type.partition("/")[0]
    return {
        "image": MessageType.IMAGE,
        "video": MessageType.VIDEO,
        "audio": MessageType.AUDIO,
    }.get(family, MessageType.FILE)


def _sid(fields: Mapping[str, str]) -> str:
    sid = fields.get("MessageSid", "") or fields.get("SmsSid", "")
    if _SID.fullmatch(sid) is None:
        raise _invalid("MessageSid", "must be Twilio's message SID (two letters, 32 hex digits)")
    return sid


def _address(fields: Mapping[str, str], name: str) -> str:
    value = fields.get(name, "").strip()
    if not value:
        raise _invalid(name, "is required")
    if len(value) > MAX_ADDRESS_LENGTH or has_control(value):
        raise _invalid(name, f"must be a phone number of at most {MAX_ADDRESS_LENGTH} characters")
    return value


def _invalid(name: str, description: str) -> InvalidArgument:
    return InvalidArgument.of(f"body.{name}", description, reason=WEBHOOK_PAYLOAD_INVALID)


# ------------------------------------------------------------ InboundChannel


class SmsInbound:
    """Twilio SMS's webhook side (ports.InboundChannel and
    ports.InboundMessageEffects): incoming messages and status callbacks on
    the same URL; STOP and START recorded on the connection."""

    def __init__(self, *, opt_outs: ConnectionStore, clock: Clock) -> None:
        self._opt_outs = opt_outs
        self._clock = clock
        self._signatures = TwilioSignatures()

    @property
    def channel(self) -> Channel:
        return Channel.SMS

    async def verify(
        self, call: WebhookCall, candidates: Sequence[OpenedConnection]
    ) -> Sequence[OpenedConnection]:
        return self._signatures.verify(call, candidates)

    def parse(self, call: WebhookCall) -> ParsedWebhook:
        return parse_sms_webhook(call.body, call.received_at or self._clock.now())

    def dedup_key(self, call: WebhookCall) -> str:
        """An incoming message: its MessageSid (Twilio may post it again);
        a status callback: the SID and the status (one per status)."""
        parsed = self.parse(call)
        if parsed.messages:
            return "message:" + parsed.messages[0].platform_message_id
        if parsed.statuses:
            fields = form_fields(parse_form(call.body))
            status = fields.get("MessageStatus", "") or fields.get("SmsStatus", "")
            return f"status:{parsed.statuses[0].platform_message_ids[0]}:{status.lower()}"
        return body_dedup_key(call.body)

    def acknowledgement(self, call: WebhookCall) -> tuple[bytes, str]:
        return EMPTY_TWIML, TWIML_CONTENT_TYPE

    async def apply(
        self, tenant_id: str, connection: OpenedConnection, message: PlatformMessage
    ) -> None:
        """STOP and START: the user's opt-out on this connection, as of the
        message (a retried older keyword does not undo a newer one)."""
        keyword = message.extra.get(KEYWORD_FIELD, "")
        if keyword not in (KEYWORD_STOP, KEYWORD_START):
            return
        await self._opt_outs.set_opt_out(
            tenant_id,
            connection.connection.connection_id,
            message.user_id,
            keyword == KEYWORD_STOP,
            message.sent_at,
        )

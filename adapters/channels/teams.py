"""Microsoft Teams (Bot Framework), inbound: Bot Connector activities,
verified, then read as typed values.

Verification (`TeamsInbound.verify`): the documented connector-to-bot
checks (https://learn.microsoft.com/en-us/azure/bot-service/rest-api/bot-framework-rest-connector-authentication?view=azure-bot-service-4.0,
"Step 4: Verify the JWT token"): a Bearer JWT in `Authorization` (the
platform's token, not ours: HandleWebhook is a public method, the
service's own auth never reads it), RS256 with a key of the OpenID keys
document, issuer `https://api.botframework.com`, not expired beyond 5
minutes of skew (bot_framework.verify_connector_token), audience = the
bot's app id: every candidate connection whose `app_id` the token names is
verified, none is 401 (also for a tenant without connections, who thus
cannot be told from one with other bots), then

- the token's serviceUrl claim equals the activity's `serviceUrl`. The
  Bot Connector signs its token, not the request: the body is read for
  this only after the token verified, and the check is what binds the two.
  The serviceUrl is where replies are posted with the bot's own access
  token, so a token replayed with a body naming another serviceUrl must be
  refused (403, as the page says for a failed requirement), which is why
  the documentation makes it requirement 7;
- the activity's `channelId` among the endorsements of the signing key,
  when the key lists any ("Step 3": an endorsement proves the channel id;
  403 without it).

Refusals store nothing. The acknowledgement is an empty 200, which the Bot
Connector takes for any activity.

Reading (`parse_activity`), shapes from
https://learn.microsoft.com/en-us/microsoftteams/platform/bots/how-to/conversations/conversation-messages
(a message and its channelData), .../conversations/channel-and-group-conversations
(mentions), .../conversations/subscribe-to-conversation-events
(conversationUpdate; "The bot's id is formatted as 28:<MicrosoftAppId>"),
.../bots/how-to/bots-filesv4 (file attachments) and
.../task-modules-and-cards/cards/cards-actions (messageBack and Adaptive
Card `Action.Submit`: a message with a `value`):

- `message` activities become PlatformMessages: account = `recipient.id`
  without its "28:" (the app id), user = `from.aadObjectId` (stable across
  the tenant) or `from.id`, text without the bot's own @mention (entities
  of type mention naming the recipient; other mentions keep their names
  without the <at> tags). One conversation per Teams conversation
  (`conversation.id`, a channel thread included) and user. What a reply
  needs (serviceUrl, conversation, activity and tenant ids) is kept in the
  extra data.
- The platform message id is the conversation id with the activity id:
  Teams message ids are per conversation (millisecond timestamps), so two
  conversations can share one, and the message id the service derives
  from it must not make the second a duplicate of the first. The activity
  id alone is `teams_activity_id` (what a reply's replyToId names).
- Attachments: the `text/html` copy of the text Teams adds is skipped;
  images (`image/png`...) and files (`application/vnd.microsoft.teams.
  file.download.info`, typed by their `fileType`) are media with their
  `contentUrl`: the file's stable address (the pre-authenticated
  `downloadUrl` is a short-lived credential and is not kept). A type the
  content model does not take (an Office document, a pasted `image/*`
  whose format is unknown, a card) is a placeholder, answered politely.
  The first attachment rides with the text; each further one is a message
  of its own ("#2", "#3" after the platform id).
- `value` (a card's Action.Submit data, a messageBack button's value) is a
  TEXT message whose `reply_payload` is the value: the `payload` string of
  our own buttons' `{"payload": ...}`, a string as it is, anything else as
  compact JSON; the text is the activity's, else the payload.
- `conversationUpdate` (membership), `typing` and every other activity type
  are skipped, the reason naming the members added or removed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any

from adapters.channels.bot_framework import (
    ConnectorKeys,
    ConnectorToken,
    document_text,
    refused,
    verify_connector_token,
)
from adapters.channels.meta import Fields, payload_error, utf8_text
from chat_service.domain.content import MediaContent, MessageContent
from chat_service.domain.content_limits import (
    IMAGE_MIME_TYPES,
    MAX_ALT_TEXT_LENGTH,
    MAX_TEXT_LENGTH,
    MIME_TYPES_BY_MESSAGE_TYPE,
)
from chat_service.domain.enums import Channel, MessageType
from chat_service.domain.errors import PermissionDenied
from chat_service.domain.webhooks import (
    ParsedWebhook,
    PlatformMessage,
    WebhookCall,
    body_dedup_key,
)
from chat_service.ports import OpenedConnection

log = logging.getLogger(__name__)

BOT_ID_PREFIX = "28:"
TEAMS_CHANNEL_ID = "msteams"
FILE_DOWNLOAD_INFO = "application/vnd.microsoft.teams.file.download.info"
AUTHORIZATION_HEADER = "authorization"  # gRPC metadata keys are lower case

WEBHOOK_SERVICE_URL_MISMATCH = "WEBHOOK_SERVICE_URL_MISMATCH"
WEBHOOK_ENDORSEMENT_MISSING = "WEBHOOK_ENDORSEMENT_MISSING"

# What channel metadata fields take (domain/validation.py).
MAX_PLATFORM_ID_LENGTH = 255
# A card's submitted data the bot gets as the reply payload.
MAX_PAYLOAD_LENGTH = 4096

# A file's `fileType` (its extension) as the MIME type the content model
# takes (content_limits.FILE_MIME_TYPES); other extensions are unsupported.
_MIME_BY_EXTENSION: Mapping[str, str] = {
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "png": "image/png",
    "gif": "image/gif",
    "pdf": "application/pdf",
    "mp4": "video/mp4",
    "mp3": "audio/mpeg",
}
_AT_TAG = re.compile(r"</?at>", re.IGNORECASE)
_SPACES = re.compile(r"[ \t]{2,}")


# ------------------------------------------------------------------ parsing


def parse_activity(raw_body: bytes) -> ParsedWebhook:
    """Read a verified activity; wrong shapes are INVALID_ARGUMENT naming the path."""
    activity, raw = _load(raw_body)
    kind = activity.text("type")
    if kind != "message":
        return ParsedWebhook(skipped=(_skipped(kind, activity),))
    return _messages(activity, raw)


def _load(raw_body: bytes) -> tuple[Fields, Mapping[str, Any]]:
    try:
        value: object = json.loads(raw_body, parse_constant=_not_json)
    except (ValueError, RecursionError) as error:
        raise payload_error("body", f"is not a JSON document: {type(error).__name__}") from None
    activity = Fields.of(value, "body")
    assert isinstance(value, dict)  # Fields.of checked it
    return activity, value


def _not_json(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def _skipped(kind: str, activity: Fields) -> str:
    if kind != "conversationUpdate":
        return f"{kind}: not a message"
    added = [member.opt_text("id") for member in activity.items("membersAdded")]
    removed = [member.opt_text("id") for member in activity.items("membersRemoved")]
    channel_data = activity.opt_obj("channelData")
    event = channel_data.opt_text("eventType") if channel_data is not None else ""
    conversation = activity.opt_obj("conversation")
    where = conversation.opt_text("id") if conversation is not None else ""
    log.info(
        "Teams conversation %s: %d member(s) added, %d removed (%s)",
        where[:120],
        len(added),
        len(removed),
        event or "conversationUpdate",
    )
    parts = [f"conversationUpdate{f' ({event})' if event else ''}: membership only"]
    if added:
        parts.append("added " + ", ".join(added))
    if removed:
        parts.append("removed " + ", ".join(removed))
    return "; ".join(parts)


@dataclass(frozen=True, slots=True)
class _Envelope:
    """What every message of one activity carries."""

    platform_id: str
    account_id: str
    user_id: str
    user_name: str
    sent_at: datetime
    conversation_id: str
    reply_to: str
    extra: Mapping[str, str]

    def message(
        self,
        index: int,
        kind: str,
        content: MessageContent,
        *,
        supported: bool = True,
        extra: Mapping[str, str] | None = None,
    ) -> PlatformMessage:
        return PlatformMessage(
            account_id=self.account_id,
            platform_message_id=self.platform_id
            if index == 0
            else f"{self.platform_id}#{index + 1}",
            user_id=self.user_id,
            sent_at=self.sent_at,
            content=content,
            supported=supported,
            kind=kind,
            user_name=self.user_name,
            thread_id=self.conversation_id
            if len(self.conversation_id) <= MAX_PLATFORM_ID_LENGTH
            else "",
            conversation_key=self.conversation_id,
            reply_to_platform_id=self.reply_to if index == 0 else "",
            extra={**self.extra, **(extra or {})},
        )


def _envelope(activity: Fields) -> _Envelope:
    activity_id = activity.text("id")
    conversation = activity.obj("conversation")
    conversation_id = conversation.text("id")
    recipient = activity.obj("recipient")
    bot_id = recipient.text("id")
    sender = activity.obj("from")
    sender_id = sender.text("id")
    channel_data = activity.opt_obj("channelData")
    tenant = channel_data.opt_obj("tenant") if channel_data is not None else None
    tenant_id = (tenant.opt_text("id") if tenant is not None else "") or conversation.opt_text(
        "tenantId"
    )
    extra = {
        "teams_service_url": activity.text("serviceUrl"),
        "teams_conversation_id": conversation_id,
        "teams_activity_id": activity_id,
        "teams_tenant_id": tenant_id,
        "teams_user_id": sender_id,
        "teams_bot_id": bot_id,
        "teams_conversation_type": conversation.opt_text("conversationType"),
    }
    return _Envelope(
        platform_id=platform_message_id(conversation_id, activity_id),
        account_id=bot_id.removeprefix(BOT_ID_PREFIX).lower(),
        user_id=sender.opt_text("aadObjectId") or sender_id,
        user_name=sender.opt_text("name"),
        sent_at=_timestamp(activity),
        conversation_id=conversation_id,
        reply_to=activity.opt_text("replyToId"),
        extra={k: v for k, v in extra.items() if v},
    )


def platform_message_id(conversation_id: str, activity_id: str) -> str:
    """The conversation and activity ids together (see the module doc),
    within the channel metadata's length, with room for "#n"."""
    joined = f"{conversation_id}/{activity_id}"
    if len(joined) <= MAX_PLATFORM_ID_LENGTH - 8:
        return joined
    digest = hashlib.sha256(conversation_id.encode()).hexdigest()[:32]
    return f"h:{digest}/{activity_id}"[: MAX_PLATFORM_ID_LENGTH - 8]


def _timestamp(activity: Fields) -> datetime:
    path = activity.at("timestamp")
    try:
        at = datetime.fromisoformat(activity.text("timestamp"))
    except ValueError:
        raise payload_error(path, "must be an ISO 8601 time") from None
    if at.tzinfo is None:
        raise payload_error(path, "must name its time zone")
    try:
        # In UTC, as every stored time: a time whose UTC lies past datetime's
        # range ("9999-12-31T23:59:59-01:00") would be written and never read.
        return at.astimezone(UTC)
    except OverflowError:
        raise payload_error(path, "is not a time in 0001-01-01 to 9999-12-31 UTC") from None


def _messages(activity: Fields, raw: Mapping[str, Any]) -> ParsedWebhook:
    envelope = _envelope(activity)
    if envelope.extra["teams_user_id"].lower() == envelope.extra["teams_bot_id"].lower():
        return ParsedWebhook(skipped=("message: from the bot itself",))
    text, truncated = _bounded(
        _without_mention(activity.opt_text("text"), activity, envelope.extra["teams_bot_id"])
    )
    extra = {"teams_text_truncated": "true"} if truncated else {}
    media = [
        _media(attachment)
        for attachment in activity.items("attachments")
        if attachment.opt_text("contentType").lower() != "text/html"
    ]
    value = raw.get("value")
    messages: list[PlatformMessage] = []
    if value is not None:
        messages.append(_submission(envelope, text, value, extra))
    elif media:
        first = media[0]
        content = first.content
        if first.supported and text:
            content = replace(content, text=text)
        elif text:  # the placeholder says what was sent; the words go too
            content = MessageContent.of_text(_bounded(f"{text}\n\n{content.text}")[0])
        messages.append(
            envelope.message(
                0, first.kind, content, supported=first.supported, extra={**extra, **first.extra}
            )
        )
    elif text:
        messages.append(envelope.message(0, "message", MessageContent.of_text(text), extra=extra))
    else:
        return ParsedWebhook(skipped=("message: no text (but the bot's mention), file or value",))
    start = 1 if value is None else 0
    for index, item in enumerate(media[start:], start=1):
        messages.append(
            envelope.message(
                index, item.kind, item.content, supported=item.supported, extra=item.extra
            )
        )
    return ParsedWebhook(messages=tuple(messages))


def _submission(
    envelope: _Envelope, text: str, value: object, extra: Mapping[str, str]
) -> PlatformMessage:
    """A card's submitted data or a messageBack value, as a text message."""
    payload = _payload(value)
    if len(payload) > MAX_PAYLOAD_LENGTH:
        placeholder = "[unsupported Teams message: a card submission too large]"
        return envelope.message(
            0, "message.value", MessageContent.of_text(placeholder), supported=False
        )
    shown, _ = _bounded(text or payload)
    return envelope.message(
        0,
        "message.value",
        MessageContent.of_text(shown),
        extra={**extra, "reply_payload": payload},
    )


def _without_mention(text: str, activity: Fields, bot_id: str) -> str:
    """The text without the bot's own @mention ("you must strip out the
    @mentions", channel-and-group-conversations), other mentions as names."""
    for entity in activity.items("entities"):
        if entity.opt_text("type").lower() != "mention":
            continue
        mentioned = entity.opt_obj("mentioned")
        if mentioned is not None and mentioned.opt_text("id").lower() == bot_id.lower():
            mention = entity.opt_text("text")
            if mention:
                text = text.replace(mention, " ")
    text = _AT_TAG.sub("", text)
    return "\n".join(_SPACES.sub(" ", line).strip() for line in text.strip().splitlines()).strip()


def _bounded(text: str) -> tuple[str, bool]:
    if len(text) <= MAX_TEXT_LENGTH:
        return text, False
    return text[: MAX_TEXT_LENGTH - 1] + "…", True


def _payload(value: object) -> str:
    # The value is read raw (not through Fields): a lone surrogate in it
    # (half an emoji cut by a card input's maxLength) must become U+FFFD
    # here, or no store can write the message.
    if isinstance(value, str):
        return utf8_text(value)
    if isinstance(value, dict) and isinstance(value.get("payload"), str):
        return utf8_text(str(value["payload"]))
    return utf8_text(document_text(value))


@dataclass(frozen=True, slots=True)
class _Media:
    kind: str
    content: MessageContent
    supported: bool
    extra: Mapping[str, str] = field(default_factory=dict)


def _media(attachment: Fields) -> _Media:
    content_type = attachment.opt_text("contentType").lower()
    name = attachment.opt_text("name")
    url = attachment.opt_text("contentUrl")
    extra = {"teams_attachment_type": content_type} if content_type else {}
    if content_type == FILE_DOWNLOAD_INFO:
        details = attachment.opt_obj("content")
        file_type = (details.opt_text("fileType") if details is not None else "") or _extension(
            name
        )
        mime = _MIME_BY_EXTENSION.get(file_type.lower(), "")
        kind, message_type = "message.file", MessageType.FILE
        shown = mime or f"{file_type or 'unknown'} file"
        extra = {**extra, "teams_file_type": file_type} if file_type else extra
    elif content_type.startswith("image/"):
        mime = content_type if content_type in IMAGE_MIME_TYPES else ""
        if not mime and (by_name := _MIME_BY_EXTENSION.get(_extension(name), "")):
            mime = by_name if by_name in IMAGE_MIME_TYPES else ""
        kind, message_type = "message.image", MessageType.IMAGE
        shown = content_type
    else:
        mime = content_type
        kind, message_type = "message.file", MessageType.FILE
        shown = content_type or "no content type"
    accepted = MIME_TYPES_BY_MESSAGE_TYPE[message_type]
    if mime in accepted and url.startswith("https://"):
        media = MediaContent(url=url, type=mime, alt_text=name[:MAX_ALT_TEXT_LENGTH])
        return _Media(kind, MessageContent(type=message_type, media=media), True, extra)
    placeholder = MessageContent.of_text(f"[unsupported Teams message: {kind} ({shown})]")
    return _Media(kind, placeholder, False, extra)


def _extension(name: str) -> str:
    return PurePosixPath(name).suffix.lstrip(".").lower()


# ------------------------------------------------------------ InboundChannel


class TeamsInbound:
    """Teams' webhook side (ports.InboundChannel); see the module doc."""

    def __init__(self, keys: ConnectorKeys) -> None:
        self._keys = keys

    @property
    def channel(self) -> Channel:
        return Channel.TEAMS

    async def verify(
        self, call: WebhookCall, candidates: Sequence[OpenedConnection]
    ) -> Sequence[OpenedConnection]:
        token = await verify_connector_token(call.headers.get(AUTHORIZATION_HEADER), self._keys)
        audiences = token.audiences
        verified = [c for c in candidates if c.connection.account_id.lower() in audiences]
        if not verified:
            # The same words whether the tenant has other bots or none.
            raise refused("the token's audience is not a Teams bot of this tenant")
        _check_activity(token, call.body)
        return verified

    def parse(self, call: WebhookCall) -> ParsedWebhook:
        return parse_activity(call.body)

    def dedup_key(self, call: WebhookCall) -> str:
        """The activity (conversation and activity id): the Bot Connector
        redelivers the same activity when it got no answer in time."""
        try:
            value = json.loads(call.body)
            conversation = value["conversation"]["id"]
            activity = value["id"]
        except (ValueError, RecursionError, KeyError, TypeError):
            return body_dedup_key(call.body)
        if not isinstance(conversation, str) or not isinstance(activity, str):
            return body_dedup_key(call.body)
        # surrogatepass: a lone surrogate in a verified body is no crash.
        joined = f"{conversation}\n{activity}".encode("utf-8", "surrogatepass")
        return "activity:" + hashlib.sha256(joined).hexdigest()

    def acknowledgement(self, call: WebhookCall) -> tuple[bytes, str]:
        return b"", "text/plain"


def _check_activity(token: ConnectorToken, body: bytes) -> None:
    """Requirement 7 and the key's endorsement (see the module doc)."""
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        value = None
    activity = value if isinstance(value, dict) else {}
    service_url = activity.get("serviceUrl")
    claimed = token.service_urls()
    if (
        not isinstance(service_url, str)
        or not claimed
        or any(url.lower() != service_url.lower() for url in claimed)
    ):
        raise PermissionDenied(
            "the token's serviceUrl claim does not match the activity's serviceUrl",
            reason=WEBHOOK_SERVICE_URL_MISMATCH,
        )
    endorsements = token.key.endorsements
    channel_id = activity.get("channelId")
    if endorsements is not None and (
        not isinstance(channel_id, str) or channel_id not in endorsements
    ):
        raise PermissionDenied(
            "the token's signing key is not endorsed for the activity's channelId",
            reason=WEBHOOK_ENDORSEMENT_MISSING,
        )

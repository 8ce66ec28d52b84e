"""Platform webhooks as the core sees them, whatever the platform.

A connector (adapters/channels/<platform>.py) turns a verified webhook body
into a `ParsedWebhook`: end users' messages and delivery statuses of our
replies, in the platform-neutral shapes below. pipeline/webhooks.py takes it
from there. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from chat_service.domain.content import MessageContent
from chat_service.domain.enums import Channel, DeliveryStatus
from chat_service.domain.identifiers import (
    MAX_MESSAGE_ID_LENGTH,
    MAX_SESSION_ID_LENGTH,
    MESSAGE_ID_PATTERN,
)


@dataclass(frozen=True, slots=True)
class WebhookCall:
    """One HTTP call from a platform, as it reached HandleWebhook."""

    tenant_id: str
    channel: Channel
    body: bytes  # byte for byte as sent: signatures are over these bytes
    content_type: str
    # Request headers, lowercase (Envoy forwards them as gRPC metadata).
    headers: Mapping[str, str] = field(default_factory=dict)
    # The original path with its query string (x-envoy-original-path), for
    # platforms that sign the URL (Twilio).
    original_path: str = ""
    # When the service took the call in (the inbox's received_at), for
    # platforms whose bodies carry no time of their own (Twilio's SMS);
    # None at the edge, before it is stored.
    received_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class PlatformMessage:
    """One end-user message from a platform."""

    account_id: str  # picks the connection: phone_number_id, page id, team id...
    platform_message_id: str  # the platform's id: the dedup key
    user_id: str  # the platform's user: wa_id, PSID, Slack user, Teams aadObjectId, E.164
    sent_at: datetime
    content: MessageContent
    # False: a type the service does not map; `content` is a placeholder
    # text, the message is stored as such and answered politely.
    supported: bool = True
    kind: str = ""  # the platform's type as sent ("interactive.button_reply")
    user_name: str = ""
    thread_id: str = ""  # Slack thread_ts, Teams conversation id...
    # Where the platform keeps the conversation when it is not the user
    # alone (a Slack channel and thread, a Teams conversation): the user's
    # messages there continue one conversation of their own. Empty: one
    # conversation per (connection, user), as on WhatsApp and Messenger.
    conversation_key: str = ""
    reply_to_platform_id: str = ""  # the platform message this one answers
    # Platform details kept in channel_metadata.additional_data (media id,
    # button payload): strings only, never a secret.
    extra: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PlatformStatus:
    """A platform's report on our outbound messages: either named ones
    (`platform_message_ids`) or, as a watermark, every one sent to `user_id`
    up to `at` (Messenger's delivery and read receipts)."""

    account_id: str
    status: DeliveryStatus
    at: datetime
    platform_message_ids: tuple[str, ...] = ()
    user_id: str = ""
    watermark: bool = False
    error: str = ""  # the platform's error code and title, on FAILED


@dataclass(frozen=True, slots=True)
class ParsedWebhook:
    messages: tuple[PlatformMessage, ...] = ()
    statuses: tuple[PlatformStatus, ...] = ()
    # What was left out and why ("entry[0].changes[1]: field is not messages").
    skipped: tuple[str, ...] = ()


# What a message the service cannot map is answered with.
UNSUPPORTED_REPLY = "Sorry, I can't read this kind of message yet. Could you send it as text?"

_ID_PREFIX = {
    Channel.WHATSAPP: "wa",
    Channel.MESSENGER: "fb",
    Channel.SLACK: "sl",
    Channel.TEAMS: "ms",
    Channel.SMS: "sms",
    Channel.VOICE: "voice",
}


# additional_data keys the platform connectors route replies by (which
# connection, which Slack channel and thread, which Teams serviceUrl): set
# only from verified webhooks, never by an RPC caller, who could otherwise
# make the tenant's bot write to anyone its credentials reach.
RESERVED_METADATA_KEYS = frozenset({"connection_id"})
RESERVED_METADATA_PREFIXES = ("slack_", "teams_", "twilio_", "sms_", "voice_", "whatsapp_")


def reserved_metadata_key(additional_data: Mapping[str, object]) -> str | None:
    """The first key of `additional_data` reserved for platform webhooks, or None."""
    for key in additional_data:
        if key in RESERVED_METADATA_KEYS or key.startswith(RESERVED_METADATA_PREFIXES):
            return key
    return None


def inbound_message_id(channel: Channel, platform_message_id: str) -> str:
    """The message id an inbound platform message is stored under: the same
    for the same platform id, so a redelivered webhook is one message and one
    reply (SendMessage is idempotent by message id). Platform ids that fit
    the message id alphabet are kept readable; others (a wamid is base64)
    are hashed."""
    prefix = _ID_PREFIX[channel]
    candidate = f"{prefix}:{platform_message_id}"
    if len(candidate) <= MAX_MESSAGE_ID_LENGTH and MESSAGE_ID_PATTERN.fullmatch(candidate):
        return candidate
    digest = hashlib.sha256(platform_message_id.encode()).hexdigest()[:40]
    return f"{prefix}:h:{digest}"


def session_of(connection_id: str, platform_user_id: str, conversation_key: str = "") -> str:
    """The session a platform user's messages continue in: one conversation
    per (connection, user), or per (connection, place, user) where the
    platform names a place (`conversation_key`), while it is open and
    recent."""
    within = f"{conversation_key}/{platform_user_id}" if conversation_key else platform_user_id
    session = f"{connection_id}:{within}"
    if len(session) <= MAX_SESSION_ID_LENGTH and ":h:" not in within:
        return session
    return f"{connection_id}:h:{hashlib.sha256(within.encode()).hexdigest()}"


def body_dedup_key(body: bytes) -> str:
    """The inbox key of a call whose platform names no delivery id."""
    return "sha256:" + hashlib.sha256(body).hexdigest()

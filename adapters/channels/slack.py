"""Slack, inbound: Events API callbacks and interactivity payloads, verified
and read into the platform-neutral shapes of domain/webhooks.py.

- Signature (https://docs.slack.dev/authentication/verifying-requests-from-slack):
  `X-Slack-Signature: v0=<hex>`, the HMAC-SHA256 keyed by the app's
  signing secret of `v0:{X-Slack-Request-Timestamp}:{raw body}`, checked
  over the bytes as received, in constant time, before anything is
  parsed. A timestamp more than five minutes from now is refused (same
  page: a captured request cannot be replayed later).
- Bodies: event callbacks are JSON (https://docs.slack.dev/apis/events-api/:
  `team_id`, `event`, `event_id`, `authorizations[]`); interactivity
  payloads are `application/x-www-form-urlencoded` with one `payload`
  field holding JSON (https://docs.slack.dev/interactivity/handling-user-interaction).
- `url_verification` (https://docs.slack.dev/reference/events/url_verification)
  carries no event: it is answered with its challenge and nothing is stored.
- Slack retries a callback not acknowledged within 3 seconds, with
  `X-Slack-Retry-Num` and `X-Slack-Retry-Reason` and the same `event_id`
  (https://docs.slack.dev/apis/events-api/#retries): the inbox key is that
  event id, so a retry is one delivery.

Decisions:
- account_id is the wrapper's `team_id` (the workspace the app is installed
  in): it picks the connection.
- A message's platform id is `{channel}:{ts}`: `ts` is unique per channel
  only (https://docs.slack.dev/reference/events/message), and every message
  has one, where `client_msg_id` is missing from some clients' messages.
  The same message delivered as `message.channels` and `app_mention` (Slack
  sends both when the bot is named) maps to the same id, and to the same
  content, so it is one message with one reply.
- Threads: a message in a channel opens or continues a thread; its
  conversation is the (channel, thread root) pair per user
  (`conversation_key` `{channel}/{root ts}`), and the reply goes into that
  thread. A DM is one conversation (`conversation_key` the DM channel); the
  reply goes into a thread only when the user wrote in one.
- `extra` keeps what the reply needs: `slack_channel`, `slack_ts` and
  `slack_thread_ts` (the thread to answer in; empty: the channel itself).
- The bot never answers itself or another bot: messages with a `bot_id`,
  the `bot_message` subtype, messages by the app's bot user (the
  `authorizations[]` entry with `is_bot`) and every subtype that is not a
  user's new message (`message_changed`, `message_deleted`, joins, topics...)
  are skipped with a reason. `file_share` and `thread_broadcast` are users'
  messages.
- Text: Slack escapes `&`, `<` and `>` (https://docs.slack.dev/messaging/formatting-message-text);
  they are unescaped, and a leading mention of the bot (`<@U0LAN0Z89> hi`)
  is dropped, as the user addressed the bot rather than said it.
- Files (`files[]`): one message per file, the first with the message's
  text and id, the next ones `{channel}:{ts}:{n}`; the media is
  `url_private` (fetched with the bot token) with Slack's `mimetype`. A
  MIME type the content model does not take makes the inbox worker store
  a placeholder and answer politely; a file Slack does not show (no URL,
  `mode` tombstone or hidden_by_limit) is unsupported here.
- `block_actions`: each clicked button (or chosen option) is a TEXT
  message with what the user saw, its `value` in `reply_payload`; link
  buttons (Slack opened the link) and actions in views are skipped.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import parse_qs

from adapters.channels.meta import (
    WEBHOOK_SIGNATURE_INVALID,
    Fields,
    Skipped,
    payload_error,
)
from chat_service.domain.content import MediaContent, MessageContent
from chat_service.domain.content_limits import MAX_ALT_TEXT_LENGTH
from chat_service.domain.enums import Channel, MessageType
from chat_service.domain.errors import InvalidArgument, Unauthenticated
from chat_service.domain.webhooks import ParsedWebhook, PlatformMessage, WebhookCall, body_dedup_key
from chat_service.ports import Clock, OpenedConnection

SIGNATURE_HEADER = "x-slack-signature"  # gRPC metadata keys are lower case
TIMESTAMP_HEADER = "x-slack-request-timestamp"
SIGNING_SECRET = "signing_secret"  # noqa: S105 (the name of the connection's field)
# "If the difference between the current time and the timestamp is more
# than five minutes, ignore the request" (the signature page).
MAX_CLOCK_SKEW_SECONDS = 300.0
WEBHOOK_TIMESTAMP_STALE = "WEBHOOK_TIMESTAMP_STALE"

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
# Subtypes that are a user's new message; every other one is skipped
# (https://docs.slack.dev/reference/events/message, "Message subtypes").
USER_SUBTYPES = frozenset({"", "file_share", "thread_broadcast"})
# A Slack challenge is some 50 characters; echoed back, so bounded.
MAX_CHALLENGE_LENGTH = 512

_SIGNATURE = re.compile(r"v0=([0-9a-fA-F]{64})")
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_TS = re.compile(r"[0-9]{1,12}(\.[0-9]{1,9})?")
_LEADING_MENTION = re.compile(r"\s*<@([A-Z0-9]+)(\|[^>]*)?>[\s,:]*")
_NO_MATCH = "the X-Slack-Signature signature does not match the body"
_HIDDEN_FILE_MODES = frozenset({"tombstone", "hidden_by_limit"})


# --------------------------------------------------------------- signature


def sign(raw_body: bytes, signing_secret: str, timestamp: str) -> str:
    """The X-Slack-Signature Slack would send (for tests and emulators)."""
    base = b"v0:" + timestamp.encode() + b":" + raw_body
    return "v0=" + hmac.new(signing_secret.encode(), base, hashlib.sha256).hexdigest()


def check_timestamp(header: str | None, now: datetime) -> str:
    """The X-Slack-Request-Timestamp when it is well-formed and within five
    minutes of `now`; Unauthenticated otherwise."""
    if header is None or not header.strip():
        raise _bad_signature("the X-Slack-Request-Timestamp header is missing")
    value = header.strip()
    if _TIMESTAMP.fullmatch(value) is None:
        raise _bad_signature("the X-Slack-Request-Timestamp header is not Unix seconds")
    if abs(now.timestamp() - int(value)) > MAX_CLOCK_SKEW_SECONDS:
        raise Unauthenticated(
            "the X-Slack-Request-Timestamp is more than 5 minutes from now (a replay?)",
            reason=WEBHOOK_TIMESTAMP_STALE,
        )
    return value


def verify_signature(raw_body: bytes, timestamp: str, header: str | None, secret: str) -> None:
    """Raise Unauthenticated unless `header` is the v0 signature of `raw_body`
    sent at `timestamp` (already checked by check_timestamp)."""
    if not secret:
        # An empty key is one anybody can sign with: a misconfigured
        # connection must not accept every body.
        raise _bad_signature("no signing secret is configured for this connection")
    if header is None or not header.strip():
        raise _bad_signature("the X-Slack-Signature header is missing")
    match = _SIGNATURE.fullmatch(header.strip())
    if match is None:
        raise _bad_signature("the X-Slack-Signature header is not 'v0=<64 hex digits>'")
    base = b"v0:" + timestamp.encode() + b":" + raw_body
    expected = hmac.new(secret.encode(), base, hashlib.sha256).digest()
    if not hmac.compare_digest(expected, bytes.fromhex(match.group(1))):
        raise _bad_signature(_NO_MATCH)


def _bad_signature(message: str) -> Unauthenticated:
    return Unauthenticated(message, reason=WEBHOOK_SIGNATURE_INVALID)


# ----------------------------------------------------------------- parsing


@dataclass(frozen=True, slots=True)
class SlackWebhook:
    """A verified body: a handshake's challenge, or users' messages."""

    kind: str  # "url_verification", "event_callback", "block_actions", ...
    challenge: str = ""
    event_id: str = ""  # event callbacks: Slack's id, the same on retries
    messages: tuple[PlatformMessage, ...] = ()
    skipped: tuple[Skipped, ...] = ()


def parse_webhook(raw_body: bytes, content_type: str = "") -> SlackWebhook:
    """Parse a body whose signature was already verified; wrong shapes are INVALID_ARGUMENT."""
    if _is_form(raw_body, content_type):
        return _interactivity(_form_payload(raw_body))
    body = _load_json(raw_body, "body")
    kind = body.text("type")
    if kind == "url_verification":
        challenge = body.text("challenge")
        if len(challenge) > MAX_CHALLENGE_LENGTH or not challenge.isprintable():
            raise payload_error(
                "challenge", f"must be at most {MAX_CHALLENGE_LENGTH} printable characters"
            )
        return SlackWebhook(kind, challenge=challenge)
    if kind != "event_callback":
        # app_rate_limited and the like: nothing a user said.
        return SlackWebhook(kind, skipped=(Skipped("body", f"type {kind!r} is not handled"),))
    return _event_callback(body)


def _is_form(raw_body: bytes, content_type: str) -> bool:
    media_type = content_type.partition(";")[0].strip().lower()
    if media_type:
        return media_type == FORM_CONTENT_TYPE
    return raw_body.startswith(b"payload=")  # no content type: what the body looks like


def _form_payload(raw_body: bytes) -> Fields:
    try:
        text = raw_body.decode("utf-8")
        fields = parse_qs(
            text,
            keep_blank_values=True,
            strict_parsing=True,
            errors="strict",
            max_num_fields=16,
        )
    except (UnicodeDecodeError, ValueError):
        raise payload_error("body", "is not a URL-encoded form") from None
    payloads = fields.get("payload", [])
    if len(payloads) != 1:
        raise payload_error("payload", "must be given exactly once (Slack's interactivity form)")
    return _load_json(payloads[0].encode(), "payload")


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def _load_json(raw: bytes, path: str) -> Fields:
    try:
        value: object = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as error:  # bad UTF-8, bad JSON, absurd nesting
        raise payload_error(path, f"is not a JSON document: {type(error).__name__}") from None
    return Fields.of(value, path)


# ----------------------------------------------------------- event callbacks


@dataclass(frozen=True, slots=True)
class _Place:
    """Where a message was written and where its answer goes."""

    channel: str
    ts: str  # the message itself
    root: str  # the thread's root: thread_ts, else the message's own ts
    reply_thread_ts: str  # the thread to answer in; "" for the channel itself
    dm: bool

    @classmethod
    def of(cls, channel: str, ts: str, thread_ts: str, *, dm: bool) -> _Place:
        root = thread_ts or ts
        # In a channel the answer always goes into the message's thread (a
        # bot answering at the top of a busy channel is noise); in a DM only
        # when the user wrote in a thread.
        return cls(channel, ts, root, thread_ts if dm else root, dm)

    @property
    def conversation_key(self) -> str:
        return self.channel if self.dm else f"{self.channel}/{self.root}"

    def message_id(self, suffix: str = "") -> str:
        return f"{self.channel}:{self.ts}{suffix}"

    def extra(self) -> dict[str, str]:
        return {
            "slack_channel": self.channel,
            "slack_ts": self.ts,
            "slack_thread_ts": self.reply_thread_ts,
        }


def _event_callback(body: Fields) -> SlackWebhook:
    event_id = body.text("event_id")
    team_id = body.text("team_id")
    bots = frozenset(
        entry.text("user_id")
        for entry in body.items("authorizations")
        if entry.flag("is_bot") and entry.has("user_id")
    )
    event = body.obj("event")
    kind = event.text("type")
    if kind not in ("message", "app_mention"):
        skip = Skipped(event.path, f"event type {kind!r} is not handled")
        return SlackWebhook("event_callback", event_id=event_id, skipped=(skip,))
    reason = _not_a_users_message(event, bots)
    if reason:
        skip = Skipped(event.path, reason)
        return SlackWebhook("event_callback", event_id=event_id, skipped=(skip,))
    return SlackWebhook(
        "event_callback", event_id=event_id, messages=_user_message(event, team_id, bots)
    )


def _not_a_users_message(event: Fields, bots: frozenset[str]) -> str:
    """Why `event` is not a user's new message for the bot, or ""."""
    subtype = event.opt_text("subtype")
    if subtype == "bot_message" or event.has("bot_id"):
        # Also the app's own replies: the bot never answers itself (nor
        # another bot, which could answer back for ever).
        return "a bot's message"
    if subtype not in USER_SUBTYPES:
        return f"subtype {subtype!r} is not a user's new message"
    if event.flag("hidden"):
        return "a hidden message"
    if event.id("user") in bots:
        return "the bot's own message"
    return ""


@dataclass(frozen=True, slots=True)
class _Envelope:
    """What every message of one event carries."""

    team_id: str
    user_id: str
    sent_at: datetime
    place: _Place
    reply_to: str  # the thread's root message, for a reply in a thread

    def message(
        self,
        suffix: str,
        content: MessageContent,
        *,
        kind: str = "message",
        supported: bool = True,
        extra: dict[str, str] | None = None,
    ) -> PlatformMessage:
        place = self.place
        return PlatformMessage(
            account_id=self.team_id,
            platform_message_id=place.message_id(suffix),
            user_id=self.user_id,
            sent_at=self.sent_at,
            content=content,
            supported=supported,
            kind=kind,
            thread_id=place.root,
            conversation_key=place.conversation_key,
            reply_to_platform_id=self.reply_to,
            extra=place.extra() | (extra or {}),
        )


def _user_message(event: Fields, team_id: str, bots: frozenset[str]) -> tuple[PlatformMessage, ...]:
    channel = event.id("channel")
    ts = _ts(event, "ts")
    thread_ts = _ts(event, "thread_ts") if event.has("thread_ts") else ""
    # app_mention events carry no channel_type; DM channel ids start with D.
    dm = event.opt_text("channel_type") == "im" or channel.startswith("D")
    envelope = _Envelope(
        team_id=team_id,
        user_id=event.id("user"),
        sent_at=_time(ts, event.at("ts")),
        place=_Place.of(channel, ts, thread_ts, dm=dm),
        reply_to=f"{channel}:{thread_ts}" if thread_ts and thread_ts != ts else "",
    )
    text = _clean_text(event.opt_text("text"), bots)
    files = event.items("files")
    if not files:
        if not text.strip():
            # Only blocks or attachments, which the text does not render.
            placeholder = MessageContent.of_text("[unsupported Slack message: no text]")
            return (envelope.message("", placeholder, supported=False),)
        return (envelope.message("", MessageContent.of_text(text)),)
    return tuple(
        _file_message(envelope, f":{index}" if index else "", item, "" if index else text)
        for index, item in enumerate(files)
    )


def _file_message(envelope: _Envelope, suffix: str, item: Fields, text: str) -> PlatformMessage:
    """One shared file (https://docs.slack.dev/reference/objects/file-object)."""
    mime_type = item.opt_text("mimetype").partition(";")[0].strip().lower()
    url = item.opt_text("url_private")
    extra = {"slack_file_id": item.opt_text("id"), "mime_type": mime_type}
    if not url or item.opt_text("mode") in _HIDDEN_FILE_MODES:
        placeholder = MessageContent.of_text("[unsupported Slack message: file (not available)]")
        return envelope.message(
            suffix, placeholder, kind="file_share", supported=False, extra=extra
        )
    media = MediaContent(
        url=url,
        type=mime_type,
        size_bytes=item.integer("size") if item.has("size") else 0,
        alt_text=(item.opt_text("title") or item.opt_text("name"))[:MAX_ALT_TEXT_LENGTH],
    )
    # A MIME type the content model does not take is left to the inbox
    # worker's check, which stores a placeholder and answers politely.
    content = MessageContent(type=_media_type(mime_type), text=text, media=media)
    return envelope.message(suffix, content, kind="file_share", extra=extra)


def _media_type(mime_type: str) -> MessageType:
    family = mime_type.partition("/")[0]
    return {
        "image": MessageType.IMAGE,
        "video": MessageType.VIDEO,
        "audio": MessageType.AUDIO,
    }.get(family, MessageType.FILE)


def _clean_text(text: str, bots: frozenset[str]) -> str:
    match = _LEADING_MENTION.match(text)
    if match is not None and match.group(1) in bots:
        text = text[match.end() :]
    # Slack's own escapes, and only those (&amp; last: "&amp;lt;" is "&lt;").
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def _ts(fields: Fields, key: str) -> str:
    value = fields.text(key)
    if _TS.fullmatch(value) is None:
        raise payload_error(fields.at(key), "must be a Slack timestamp like '1355517523.000005'")
    return value


def _time(ts: str, path: str) -> datetime:
    try:
        return datetime.fromtimestamp(float(ts), UTC)
    except (OverflowError, OSError, ValueError):
        raise payload_error(path, "is not a valid Unix time") from None


# ------------------------------------------------------------ interactivity


def _interactivity(payload: Fields) -> SlackWebhook:
    kind = payload.text("type")
    if kind != "block_actions":
        # view_submission, shortcuts...: nothing the bot was asked in a chat.
        skip = Skipped("payload", f"interaction type {kind!r} is not handled")
        return SlackWebhook(kind, skipped=(skip,))
    user = payload.obj("user")
    team = payload.opt_obj("team")
    team_id = (team.opt_text("id") if team is not None else "") or user.text("team_id")
    container = payload.opt_obj("container")
    where = container.opt_text("type") if container is not None else ""
    if container is None or where not in ("message", "message_attachment"):
        skip = Skipped("payload.container", f"actions in a {where or 'view'!r} are not handled")
        return SlackWebhook(kind, skipped=(skip,))
    message = payload.opt_obj("message")
    channel_field = payload.opt_obj("channel")
    channel = (channel_field.opt_text("id") if channel_field is not None else "") or (
        container.text("channel_id")
    )
    message_ts = container.opt_text("message_ts") or (message.text("ts") if message else "")
    thread_ts = (message.opt_text("thread_ts") if message else "") or container.opt_text(
        "thread_ts"
    )
    messages: list[PlatformMessage] = []
    skipped: list[Skipped] = []
    for action in payload.items("actions"):
        chosen = _chosen(action)
        if isinstance(chosen, Skipped):
            skipped.append(chosen)
            continue
        title, value = chosen
        action_ts = _ts(action, "action_ts")
        dm = channel.startswith("D")
        # A button on a message at the top of a channel: the answer opens
        # that message's thread, as for a user's message there.
        place = _Place.of(channel, action_ts, thread_ts or ("" if dm else message_ts), dm=dm)
        extra = place.extra() | {
            "reply_payload": value,
            "slack_action_id": action.opt_text("action_id"),
        }
        messages.append(
            PlatformMessage(
                account_id=team_id,
                platform_message_id=f"{channel}:action:{action_ts}",
                user_id=user.id("id"),
                sent_at=_time(action_ts, action.at("action_ts")),
                content=MessageContent.of_text(title),
                kind="block_actions",
                user_name=user.opt_text("username") or user.opt_text("name"),
                thread_id=place.root,
                conversation_key=place.conversation_key,
                reply_to_platform_id=f"{channel}:{message_ts}" if message_ts else "",
                extra=extra,
            )
        )
    return SlackWebhook(kind, messages=tuple(messages), skipped=tuple(skipped))


def _chosen(action: Fields) -> tuple[str, str] | Skipped:
    """What the user picked: (what they saw, the value the bot gave it)."""
    kind = action.text("type")
    if kind == "button":
        if action.has("url"):
            return Skipped(action.path, "a link button (Slack opened the link)")
        title = action.obj("text").text("text")
        return title, action.opt_text("value") or title
    option = action.opt_obj("selected_option")
    if option is not None:  # static_select, radio_buttons, overflow
        title = option.obj("text").text("text")
        return title, option.opt_text("value") or title
    return Skipped(action.path, f"action type {kind!r} is not handled")


# ------------------------------------------------------------ InboundChannel


class SlackInbound:
    """Slack's webhook side (ports.InboundChannel): event callbacks and
    interactivity payloads on the same URL.

    Verification: the timestamp first (it needs no secret), then the
    signature with each candidate connection's signing secret. Every
    candidate is tried, and a tenant with no connection costs one HMAC as
    well, so the answer and its timing do not tell whether the tenant exists.
    """

    def __init__(self, *, clock: Clock) -> None:
        self._clock = clock
        # Signs nothing anybody knows (see MetaWebhooks: the same reason).
        self._decoy_secret = secrets.token_hex(32)

    @property
    def channel(self) -> Channel:
        return Channel.SLACK

    async def verify(
        self, call: WebhookCall, candidates: Sequence[OpenedConnection]
    ) -> Sequence[OpenedConnection]:
        timestamp = check_timestamp(call.headers.get(TIMESTAMP_HEADER), self._clock.now())
        header = call.headers.get(SIGNATURE_HEADER)
        try:
            verify_signature(call.body, timestamp, header, self._decoy_secret)
            refusal = _bad_signature(_NO_MATCH)
        except Unauthenticated as error:
            refusal = error
        verified = [c for c in candidates if _signs(call.body, timestamp, header, c)]
        if not verified:
            raise refusal
        return verified

    def parse(self, call: WebhookCall) -> ParsedWebhook:
        parsed = parse_webhook(call.body, call.content_type)
        return ParsedWebhook(
            messages=parsed.messages,
            skipped=tuple(f"{skip.path}: {skip.reason}" for skip in parsed.skipped),
        )

    def dedup_key(self, call: WebhookCall) -> str:
        parsed = parse_webhook(call.body, call.content_type)
        if parsed.event_id:
            return f"event:{parsed.event_id}"
        return body_dedup_key(call.body)

    def acknowledgement(self, call: WebhookCall) -> tuple[bytes, str]:
        """url_verification: its challenge, as JSON (one of the three answers
        Slack documents); anything else: an empty 200, all Slack reads."""
        try:
            parsed = parse_webhook(call.body, call.content_type)
        except InvalidArgument:
            return b"", "text/plain"
        if parsed.challenge:
            return json.dumps({"challenge": parsed.challenge}).encode(), "application/json"
        return b"", "text/plain"


def _signs(body: bytes, timestamp: str, header: str | None, candidate: OpenedConnection) -> bool:
    try:
        verify_signature(body, timestamp, header, candidate.secrets.get(SIGNING_SECRET, ""))
    except Unauthenticated:
        return False
    return True

"""Microsoft Teams (Bot Framework), outbound: a stored reply as one
activity posted to the Bot Connector.

Where: `POST {serviceUrl}/v3/conversations/{conversation id}/activities/
{activity id}` ("Reply to activity",
https://learn.microsoft.com/en-us/azure/bot-service/rest-api/bot-framework-rest-connector-api-reference?view=azure-bot-service-4.0#reply-to-activity),
the serviceUrl, conversation and activity of the user's message the reply
answers (`reply_to_message_id` -> that stored message's channel metadata,
put there by adapters/channels/teams.py from a verified activity). A
message answering none (an agent's) goes to the conversation of the user's
latest Teams message, without replyToId ("Send to conversation"). The
serviceUrl is checked again before the bot's token goes there
(bot_framework.service_url_problem): channel metadata can also come from
a SendMessage caller.

With what: the bot's access token (bot_framework.BotTokens: client
credentials with the connection's app id and password, cached per app). A
401 with a cached token is tried once more with a fresh one.

What (https://learn.microsoft.com/en-us/microsoftteams/platform/bots/how-to/conversations/conversation-messages,
.../task-modules-and-cards/cards/cards-reference, .../cards/cards-actions,
.../bots/how-to/conversations/suggested-actions). The content arrives
adapted by format_for_channel (domain/channel_rules.py, Teams' row):
- text as markdown (`textFormat: markdown`);
- quick replies (at most 3: "Teams displays only the first three") as
  suggested actions of type `imBack`, whose value is the title: what the
  user taps is sent back as their message;
- buttons as a hero card (at most 6 buttons, "Maximum six") carrying the
  text and the image if any: POSTBACK as `messageBack` (the title shown and
  sent as text, `{"payload": ...}` as the value, which comes back as the
  inbound reply_payload), URL as `openUrl`. Suggested actions "aren't
  supported for chat bots with attachments", so with a card the quick
  replies become `messageBack` buttons of it too (3 + 3 fit in six);
- an image alone as an attachment (`contentType`, `contentUrl`, `name`);
  with quick replies, a hero card with the image;
- a carousel as `attachmentLayout: carousel` of hero cards (at most 10:
  "A carousel can display a maximum of ten cards per message"), its quick
  replies as numbered options after the text.

Answers (https://learn.microsoft.com/en-us/microsoftteams/platform/bots/how-to/rate-limit):
429 is retried after its Retry-After ("In addition to retrying error code
429, error codes 412, 502, and 504 must also be retried"), as are other
5xx answers and timeouts; 400, 401, 403 and 404 are permanent, the
Connector's error code and message the reason. The answer's `id` is the
reply's platform id (Teams names none when it splits a message: then it
is empty, the reply is still sent).

Pace: "the global limit per app per tenant is 50 requests per second"
(same page): one Pacer slot per (app id, Teams tenant id).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from adapters.channels.bot_framework import BotTokens, is_loopback_url, service_url_problem
from adapters.channels.http_api import HttpApi, bearer, json_object, redact, retry_after
from adapters.channels.outbound import (
    MessageLookup,
    Pacer,
    SenderFactory,
    find_answered,
    open_connection,
    options_text,
    unsendable,
)
from chat_service.domain.content import Button, CarouselCard, MessageContent, QuickReply
from chat_service.domain.content_limits import MAX_TEXT_LENGTH
from chat_service.domain.enums import ButtonType, Channel
from chat_service.domain.model import Conversation, Message
from chat_service.ports import (
    ChannelSender,
    Clock,
    ConnectionDirectory,
    ConversationStore,
    DeliveryError,
    DeliveryReceipt,
)

APP_PASSWORD = "app_password"  # noqa: S105 (the name of the connection's secret)
HERO_CARD = "application/vnd.microsoft.card.hero"
MAX_CARD_BUTTONS = 6
MAX_CAROUSEL_CARDS = 10
MAX_SUGGESTED_ACTIONS = 3
RATE_PER_SECOND = 50.0
# "error codes 412, 502, and 504 must also be retried" (rate-limit page).
_RETRIED = frozenset({408, 412, 429})

Activity = dict[str, Any]


@dataclass(frozen=True, slots=True)
class TeamsPlace:
    """Where a reply goes: from a stored inbound Teams message."""

    service_url: str
    conversation_id: str
    activity_id: str  # "" : not a reply to one activity
    tenant_id: str
    user_id: str  # the user's Teams id ("29:...")
    bot_id: str  # the bot's Teams id ("28:<app id>")

    @classmethod
    def of(cls, message: Message, *, reply: bool) -> TeamsPlace | None:
        data = message.channel_metadata.additional_data
        service_url = data.get("teams_service_url")
        conversation_id = data.get("teams_conversation_id")
        if not isinstance(service_url, str) or not isinstance(conversation_id, str):
            return None
        if not service_url or not conversation_id:
            return None

        def text(key: str) -> str:
            value = data.get(key)
            return value if isinstance(value, str) else ""

        return cls(
            service_url=service_url,
            conversation_id=conversation_id,
            activity_id=text("teams_activity_id") if reply else "",
            tenant_id=text("teams_tenant_id"),
            user_id=text("teams_user_id"),
            bot_id=text("teams_bot_id"),
        )

    @property
    def url(self) -> str:
        base = f"{self.service_url.rstrip('/')}/v3/conversations/{_segment(self.conversation_id)}"
        if self.activity_id:
            return f"{base}/activities/{_segment(self.activity_id)}"
        return f"{base}/activities"


def _segment(value: str) -> str:
    return quote(value, safe="")


class ConnectorApi(HttpApi):
    """The Bot Connector's activities endpoint (one pool for every
    serviceUrl: the URL is whole on each call)."""

    platform = "the Bot Connector"

    async def post(self, url: str, activity: Activity, *, token: str) -> httpx.Response:
        return await self._send("POST", url, json=activity, headers=bearer(token))


class TeamsSender:
    """ChannelSender for Teams (see the module doc)."""

    def __init__(
        self,
        *,
        connector: ConnectorApi,
        tokens: BotTokens,
        directory: ConnectionDirectory,
        store: MessageLookup,
        pacer: Pacer,
        allow_loopback: bool = False,
    ) -> None:
        self._connector = connector
        self._tokens = tokens
        self._directory = directory
        self._store = store
        self._pacer = pacer
        self._allow_loopback = allow_loopback

    async def send(self, conversation: Conversation, message: Message) -> DeliveryReceipt:
        opened = await open_connection(self._directory, conversation, Channel.TEAMS, APP_PASSWORD)
        place = await self._place(conversation, message)
        problem = service_url_problem(place.service_url, allow_loopback=self._allow_loopback)
        if problem is not None:
            raise DeliveryError(f"not sent: {problem}", retryable=False)
        activity = teams_activity(message.content, place)
        app_id = opened.connection.account_id
        password = opened.secrets.get(APP_PASSWORD, "")
        await self._pacer.wait(f"{app_id.lower()}/{place.tenant_id}")
        token, fresh = await self._tokens.token(app_id, password)
        response = await self._connector.post(place.url, activity, token=token)
        if response.status_code == 401 and not fresh:
            # A cached token the Connector no longer takes: once with a new one.
            self._tokens.forget(app_id, password)
            token, _ = await self._tokens.token(app_id, password)
            response = await self._connector.post(place.url, activity, token=token)
        if not response.is_success:
            raise connector_error(response, token=token)
        return DeliveryReceipt(platform_message_id=_activity_id(response))

    async def _place(self, conversation: Conversation, message: Message) -> TeamsPlace:
        """Where the user's Teams message the reply answers came from (as a
        reply to it), else their latest's (to its conversation)."""
        source = await find_answered(
            self._store,
            conversation,
            message,
            lambda m: m.channel is Channel.TEAMS and TeamsPlace.of(m, reply=False) is not None,
        )
        place = TeamsPlace.of(source.message, reply=source.named) if source is not None else None
        if place is None:
            raise DeliveryError(
                "no Teams message of the user to answer (none carries a serviceUrl)",
                retryable=False,
            )
        return place


def _activity_id(response: httpx.Response) -> str:
    body = json_object(response)
    found = body.get("id") if body is not None else None
    return found if isinstance(found, str) else ""


def connector_error(response: httpx.Response, *, token: str = "") -> DeliveryError:
    """What a failed Bot Connector answer means for the delivery."""
    status = response.status_code
    detail = f"HTTP {status}"
    body = json_object(response)
    error = body.get("error") if body is not None else None
    if isinstance(error, dict):
        code, message = error.get("code"), error.get("message")
        parts = [p for p in (code, message) if isinstance(p, str) and p]
        if parts:
            detail += ": " + redact(": ".join(parts), token)
    wait = retry_after(response.headers)
    if status == 429:
        return DeliveryError(
            f"throttled by the Bot Connector: {detail}",
            retryable=True,
            retry_after=wait if wait is not None else 1.0,
        )
    if status in _RETRIED or status >= 500:
        return DeliveryError(detail, retryable=True, retry_after=wait)
    return DeliveryError(detail, retryable=False)


# ------------------------------------------------------------------ mapping


def teams_activity(content: MessageContent, place: TeamsPlace) -> Activity:
    """The reply activity that shows `content` in the conversation of `place`."""
    if content.location is not None:
        raise unsendable("Teams shows no location (format_for_channel makes it text)")
    media = content.media
    if media is not None and not media.type.startswith("image/"):
        raise unsendable("Teams shows images only (format_for_channel makes other media text)")
    activity: Activity = {"type": "message", "conversation": {"id": place.conversation_id}}
    if place.bot_id:
        activity["from"] = {"id": place.bot_id}
    if place.user_id:
        activity["recipient"] = {"id": place.user_id}
    if place.activity_id:
        activity["replyToId"] = place.activity_id
    text = content.text
    replies = content.quick_replies
    if content.cards:
        if len(content.cards) > MAX_CAROUSEL_CARDS:
            raise unsendable(f"a Teams carousel shows at most {MAX_CAROUSEL_CARDS} cards")
        activity["attachmentLayout"] = "carousel"
        activity["attachments"] = [_hero(_card(card)) for card in content.cards]
        if media is not None:
            activity["attachments"].insert(0, _image(content))
        text = _with_options(text, replies)
    elif content.buttons or (replies and media is not None):
        card: dict[str, Any] = {}
        if text:
            card["text"] = text
        if media is not None:
            card["images"] = [_card_image(media.url, media.alt_text)]
        buttons = [_button(button) for button in content.buttons]
        buttons += [_reply_button(reply) for reply in replies]
        if len(buttons) > MAX_CARD_BUTTONS:
            raise unsendable(f"a Teams hero card shows at most {MAX_CARD_BUTTONS} buttons")
        card["buttons"] = buttons
        activity["attachments"] = [_hero(card)]
        text = ""
    else:
        if media is not None:
            activity["attachments"] = [_image(content)]
        if replies:
            # Suggested actions ride on a message: one without text shows
            # its choices as its text.
            text = text or options_text([reply.title for reply in replies], MAX_TEXT_LENGTH)
            if len(replies) > MAX_SUGGESTED_ACTIONS:
                raise unsendable(f"Teams shows at most {MAX_SUGGESTED_ACTIONS} suggested actions")
            activity["suggestedActions"] = {
                "actions": [
                    {"type": "imBack", "title": reply.title, "value": reply.title}
                    for reply in replies
                ]
            }
    if text:
        activity["text"] = text
        activity["textFormat"] = "markdown"
    if "text" not in activity and "attachments" not in activity:
        raise unsendable("the message has nothing Teams can show")
    return activity


def _hero(card: Mapping[str, Any]) -> dict[str, Any]:
    return {"contentType": HERO_CARD, "content": dict(card)}


def _card(card: CarouselCard) -> dict[str, Any]:
    hero: dict[str, Any] = {"title": card.title}
    if card.subtitle:
        hero["subtitle"] = card.subtitle
    if card.image_url:
        hero["images"] = [_card_image(card.image_url, card.title)]
    if card.buttons:
        hero["buttons"] = [_button(button) for button in card.buttons]
    return hero


def _card_image(url: str, alt: str) -> dict[str, str]:
    return {"url": url, "alt": alt} if alt else {"url": url}


def _image(content: MessageContent) -> dict[str, str]:
    media = content.media
    assert media is not None
    attachment = {"contentType": media.type, "contentUrl": media.url}
    if media.alt_text:
        attachment["name"] = media.alt_text
    return attachment


def _button(button: Button) -> dict[str, Any]:
    if button.type is ButtonType.POSTBACK:
        return _message_back(button.title, button.payload or button.title)
    if button.type is ButtonType.URL:
        return {"type": "openUrl", "title": button.title, "value": button.url}
    kind = button.type.value if button.type is not None else "unspecified"
    raise unsendable(f"Teams cards have no {kind} button (format_for_channel makes it text)")


def _reply_button(reply: QuickReply) -> dict[str, Any]:
    return _message_back(reply.title, reply.payload or reply.title)


def _message_back(title: str, payload: str) -> dict[str, Any]:
    # The title is what the user sees themselves send and what the bot gets
    # as text; the payload comes back as the activity's value.
    return {
        "type": "messageBack",
        "title": title,
        "text": title,
        "displayText": title,
        "value": {"payload": payload},
    }


def _with_options(text: str, replies: Sequence[QuickReply]) -> str:
    if not replies:
        return text
    numbered = "\n".join(f"{n}. {reply.title}" for n, reply in enumerate(replies, 1))
    return "\n\n".join(part for part in (text, f"Reply with one of:\n{numbered}") if part)


# ------------------------------------------------------------------ factory


def teams_sender_factory(
    connector: ConnectorApi,
    tokens: BotTokens,
    *,
    token_url: str,
    rate_per_second: float = RATE_PER_SECOND,
) -> SenderFactory:
    """What bootstrap hands wiring. One pacer for the process (50 requests
    a second per app and Teams tenant); loopback serviceUrls only when the
    token endpoint is itself on loopback (see bot_framework's module doc)."""
    pacer = Pacer(rate_per_second)
    allow_loopback = is_loopback_url(token_url)

    def build(
        directory: ConnectionDirectory, store: ConversationStore, clock: Clock
    ) -> ChannelSender:
        del clock  # Teams has no reply window
        return TeamsSender(
            connector=connector,
            tokens=tokens,
            directory=directory,
            store=store,
            pacer=pacer,
            allow_loopback=allow_loopback,
        )

    return build

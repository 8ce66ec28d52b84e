"""Slack, outbound: a stored reply as `chat.postMessage`, in the thread of
the message it answers.

- Where: the channel and thread the inbound message named
  (`additional_data.slack_channel` / `slack_thread_ts`, kept by
  adapters/channels/slack.py), found through the reply's
  `reply_to_message_id`; a message that answers none (an agent's) goes
  where the conversation's latest Slack message came from.
- What (https://docs.slack.dev/reference/methods/chat.postMessage): `text`
  alone for plain text; Block Kit otherwise
  (https://docs.slack.dev/reference/block-kit/blocks), with `text` kept as
  the notification fallback: a `section` for the text (mrkdwn, at most
  3000 characters per section), an `image` block for an image, an
  `actions` block for buttons and for quick replies (buttons, at most 25
  elements per block; button text at most 75 characters, `value` at most
  2000, URL at most 3000: https://docs.slack.dev/reference/block-kit/block-elements/button-element),
  and a carousel as one section per card (title and subtitle, the image as
  the section's accessory) with its buttons in an actions block. A message
  holds at most 50 blocks; content that would break a Block Kit limit is
  sent as text instead (options numbered, links written out), never refused.
- Text: Slack's `&`, `<`, `>` are escaped, as the formatting guide asks
  (https://docs.slack.dev/messaging/formatting-message-text). Slack
  truncates `text` past 40,000 characters and recommends at most 4,000 per
  message (https://docs.slack.dev/changelog/2018-truncating-really-long-messages);
  replies arrive split to 4,000 by format_for_channel (domain/channel_rules.py),
  and anything longer still goes out as several posts, in order.
- Pacing: about one message per second per channel
  (https://docs.slack.dev/apis/web-api/rate-limits, "Posting messages"),
  per (workspace, channel) in this process.
- Receipt: `{channel}:{ts}` of the (last) post, the form inbound Slack
  message ids take (a `ts` is unique per channel only).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from adapters.channels.outbound import (
    MessageLookup,
    Pacer,
    PartialSends,
    Payload,
    SenderFactory,
    find_answered,
    open_connection,
)
from adapters.channels.slack_api import SlackWebApi
from chat_service.domain.channels import MAPS_URL
from chat_service.domain.content import Button, CarouselCard, MediaContent, MessageContent
from chat_service.domain.content_limits import IMAGE_MIME_TYPES
from chat_service.domain.enums import ButtonType, Channel
from chat_service.domain.model import Conversation, Message
from chat_service.domain.text import split_text
from chat_service.ports import (
    ChannelSender,
    Clock,
    ConnectionDirectory,
    ConversationStore,
    DeliveryError,
    DeliveryReceipt,
)

POST_MESSAGE = "chat.postMessage"
BOT_TOKEN = "bot_token"  # noqa: S105 (the name of the connection's secret)
# Slack's "about one message per second per channel" (rate-limits page).
RATE_PER_CHANNEL = 1.0
MAX_TEXT_LENGTH = 4000  # per post (recommended; Slack truncates at 40,000)
MAX_SECTION_TEXT = 3000  # section block text
MAX_BLOCKS = 50  # per message
MAX_ACTIONS = 25  # elements per actions block
MAX_BUTTON_TEXT = 75
MAX_BUTTON_VALUE = 2000
MAX_URL_LENGTH = 3000  # button url, image_url
MAX_ALT_TEXT = 2000  # image alt_text


@dataclass(frozen=True, slots=True)
class SlackPlace:
    """Where a reply goes: a channel (or DM) and the thread in it, if any."""

    channel: str
    thread_ts: str = ""


class SlackSender:
    """ChannelSender for Slack: one stored reply, one post (or a few, in
    order, for text past the per-post limit). The ts of posts already made
    are kept in memory per message, so a retry after a failed later post
    does not post the earlier ones twice."""

    def __init__(
        self,
        *,
        api: SlackWebApi,
        directory: ConnectionDirectory,
        store: MessageLookup,
        pacer: Pacer,
    ) -> None:
        self._api = api
        self._directory = directory
        self._store = store
        self._pacer = pacer
        self._partial = PartialSends()

    async def send(self, conversation: Conversation, message: Message) -> DeliveryReceipt:
        opened = await open_connection(self._directory, conversation, Channel.SLACK, BOT_TOKEN)
        place = await self._place(conversation, message)
        payloads = slack_payloads(message.content, place)
        token = opened.secrets.get(BOT_TOKEN, "")
        pace_key = f"{opened.connection.account_id}/{place.channel}"

        async def post(payload: Payload) -> str:
            await self._pacer.wait(pace_key)
            answer = await self._api.call(POST_MESSAGE, payload, token=token)
            return _posted_id(answer, place.channel)

        posted = await self._partial.send(message, payloads, post)
        return DeliveryReceipt(platform_message_id=posted)

    async def _place(self, conversation: Conversation, message: Message) -> SlackPlace:
        """Where the user's Slack message the reply answers came from (else
        their latest's)."""
        source = await find_answered(
            self._store, conversation, message, lambda m: _place_of(m) is not None
        )
        place = _place_of(source.message) if source is not None else None
        if place is None:
            raise DeliveryError(
                "no Slack channel is known for this conversation (no message of the user "
                "names one in additional_data.slack_channel)",
                retryable=False,
            )
        return place


def slack_sender_factory(
    api: SlackWebApi, *, rate_per_channel: float = RATE_PER_CHANNEL
) -> SenderFactory:
    """What bootstrap hands wiring: builds the sender once the connection
    directory exists. One pacer for the process, per (workspace, channel)."""
    pacer = Pacer(rate_per_channel)

    def build(
        directory: ConnectionDirectory, store: ConversationStore, clock: Clock
    ) -> ChannelSender:
        return SlackSender(api=api, directory=directory, store=store, pacer=pacer)

    return build


def _place_of(message: Message) -> SlackPlace | None:
    data = message.channel_metadata.additional_data
    channel = data.get("slack_channel")
    thread_ts = data.get("slack_thread_ts", "")
    if not isinstance(channel, str) or not channel:
        return None
    return SlackPlace(channel, thread_ts if isinstance(thread_ts, str) else "")


def _posted_id(answer: dict[str, Any], channel: str) -> str:
    ts = answer.get("ts")
    if not isinstance(ts, str) or not ts:
        # Slack took the message: a retry could post it twice.
        raise DeliveryError("Slack posted the message but named no ts", retryable=False)
    # Posting to a user id lands in the DM channel Slack names in the answer.
    posted_in = answer.get("channel")
    return f"{posted_in if isinstance(posted_in, str) and posted_in else channel}:{ts}"


# ------------------------------------------------------------------ mapping


def slack_payloads(content: MessageContent, place: SlackPlace) -> list[Payload]:
    """The chat.postMessage calls that show `content` at `place`, in order."""
    base: Payload = {"channel": place.channel}
    if place.thread_ts:
        base["thread_ts"] = place.thread_ts
    image = content.media if _is_image(content.media) else None
    text = "\n\n".join(part for part in (content.text, *_written_out(content, image)) if part)
    if image is None and not (content.buttons or content.quick_replies or content.cards):
        return [base | {"text": _escape(part)} for part in _text_parts(text)]
    blocks = _blocks(text, image, content)
    if not blocks:  # past a Block Kit limit (or nothing to show): the content as text
        return [base | {"text": _escape(part)} for part in _text_parts(_as_text(content))]
    return [base | {"text": _fallback(text, image, content), "blocks": blocks}]


def _text_parts(text: str) -> tuple[str, ...]:
    parts = split_text(text, MAX_TEXT_LENGTH)
    if not parts:
        raise DeliveryError("the message has nothing Slack can show", retryable=False)
    return parts


def _is_image(media: MediaContent | None) -> bool:
    # Image blocks show PNG, JPEG and GIF (image block reference).
    return media is not None and media.type in IMAGE_MIME_TYPES and len(media.url) <= MAX_URL_LENGTH


def _written_out(content: MessageContent, image: MediaContent | None) -> list[str]:
    """What has no block of its own, as lines of text: a file that is not an
    image (Slack unfurls the link) and a location (a maps link)."""
    lines: list[str] = []
    media = content.media
    if media is not None and media is not image:
        lines.append(f"{media.alt_text}\n{media.url}" if media.alt_text else media.url)
    location = content.location
    if location is not None:
        link = MAPS_URL.format(latitude=repr(location.latitude), longitude=repr(location.longitude))
        lines.append(f"{location.address}\n{link}" if location.address else link)
    return lines


def _blocks(text: str, image: MediaContent | None, content: MessageContent) -> list[Payload] | None:
    """The Block Kit blocks of `content`, or None where a limit would be broken."""
    blocks: list[Payload] = [_section(part) for part in _section_parts(text)]
    if image is not None:
        blocks.append(
            {
                "type": "image",
                "image_url": image.url,
                "alt_text": (image.alt_text or "image")[:MAX_ALT_TEXT],
            }
        )
    for index, card in enumerate(content.cards):
        if index:
            blocks.append({"type": "divider"})
        blocks.append(_card_section(card))
        buttons = [_button(b, f"card-{index}-{i}") for i, b in enumerate(card.buttons)]
        if buttons:
            blocks.extend(_actions(buttons))
    elements = [_button(b, f"button-{i}") for i, b in enumerate(content.buttons)]
    elements += [
        _choice(reply.title, reply.payload, f"qr-{i}")
        for i, reply in enumerate(content.quick_replies)
        if reply.content_type == "text" and reply.title
    ]
    blocks.extend(_actions(elements))
    if len(blocks) > MAX_BLOCKS:
        return None
    if any(element is None for block in blocks for element in block.get("elements", ())):
        return None
    return blocks


def _section_parts(text: str) -> list[str]:
    """`text` as section texts: each at most 3000 characters once escaped."""
    limit = MAX_SECTION_TEXT
    while True:
        parts = split_text(text, limit)
        if all(len(_escape(part)) <= MAX_SECTION_TEXT for part in parts):
            return list(parts)
        limit = limit * 3 // 4  # escapes made a part longer: cut smaller


def _section(text: str) -> Payload:
    return {"type": "section", "text": {"type": "mrkdwn", "text": _escape(text)}}


def _card_section(card: CarouselCard) -> Payload:
    lines = [f"*{_escape(card.title)}*"] if card.title else []
    if card.subtitle:
        lines.append(_escape(card.subtitle))
    section: Payload = {"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(lines)}}
    if card.image_url and len(card.image_url) <= MAX_URL_LENGTH:
        section["accessory"] = {
            "type": "image",
            "image_url": card.image_url,
            "alt_text": (card.title or "image")[:MAX_ALT_TEXT],
        }
    return section


def _actions(elements: list[Payload | None]) -> list[Payload]:
    return [
        {"type": "actions", "elements": elements[start : start + MAX_ACTIONS]}
        for start in range(0, len(elements), MAX_ACTIONS)
    ]


def _button(button: Button, action_id: str) -> Payload | None:
    """A Block Kit button, or None for a kind Slack cannot show (PHONE and
    SHARE: format_for_channel makes them text before they get here)."""
    if button.type is ButtonType.POSTBACK:
        return _choice(button.title, button.payload, action_id)
    if button.type is ButtonType.URL and button.url and len(button.url) <= MAX_URL_LENGTH:
        return {
            "type": "button",
            "text": _plain(button.title),
            "action_id": action_id,
            "url": button.url,
        }
    return None


def _choice(title: str, payload: str, action_id: str) -> Payload | None:
    """A button that answers: its value comes back as the inbound reply_payload."""
    value = payload or title
    if not title or len(title) > MAX_BUTTON_TEXT or len(value) > MAX_BUTTON_VALUE:
        return None  # cut short, the bot would get a payload it never sent
    return {"type": "button", "text": _plain(title), "action_id": action_id, "value": value}


def _plain(text: str) -> Payload:
    return {"type": "plain_text", "text": text, "emoji": True}


def _fallback(text: str, image: MediaContent | None, content: MessageContent) -> str:
    """The notification text of a message with blocks (Slack shows it where
    blocks cannot be)."""
    shown = (
        text
        or " / ".join(card.title for card in content.cards if card.title)
        or " / ".join(
            [b.title for b in content.buttons] + [r.title for r in content.quick_replies if r.title]
        )
        or (image.alt_text if image is not None else "")
        or "image"
    )
    shown = shown if len(shown) <= MAX_TEXT_LENGTH else shown[: MAX_TEXT_LENGTH - 1] + "…"
    return _escape(shown)


def _as_text(content: MessageContent) -> str:
    """`content` written out, for when Block Kit cannot hold it."""
    paragraphs = [content.text, *_written_out(content, None)]
    options: list[str] = []
    for number, card in enumerate(content.cards, 1):
        lines = [f"{number}. {card.title}", card.subtitle, card.image_url]
        lines += [f"{b.title}: {b.url}" for b in card.buttons if b.type is ButtonType.URL]
        options += [
            f"{b.title} ({card.title})" for b in card.buttons if b.type is ButtonType.POSTBACK
        ]
        paragraphs.append("\n".join(line for line in lines if line))
    paragraphs += [f"{b.title}: {b.url}" for b in content.buttons if b.type is ButtonType.URL]
    options += [b.title for b in content.buttons if b.type is ButtonType.POSTBACK]
    options += [r.title for r in content.quick_replies if r.title]
    if options:
        numbered = (f"{number}. {title}" for number, title in enumerate(options, 1))
        paragraphs.append("\n".join(("Reply with one of:", *numbered)))
    return "\n\n".join(p for p in paragraphs if p)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

"""What every platform's sender shares (whatsapp_send.py and messenger_send.py
through meta_outbound.py, slack_send.py, teams_send.py; sms_send.py can use
it the same way). What a platform does differently stays in its module.

- `open_connection`: the conversation's channel connection, from
  `channel_metadata.additional_data["connection_id"]` through the
  ConnectionDirectory, with its secrets opened: refused (permanently) when
  it is missing, of another platform or without the secret the sender
  needs.
- `find_answered`: the user's message a reply answers (its
  `reply_to_message_id`), else the user's latest; where a platform keeps
  what a reply needs (the 24-hour window's start, Slack's thread, Teams'
  serviceUrl): on the INBOUND message's channel metadata.
- `PartialSends`: one stored reply sent as several platform calls, in
  order, remembering the ids of the calls already made, so that a retry
  after a failed later call does not make the earlier ones again. The
  receipt is the last call's id.
- `Pacer`: spaces the calls for one key (a phone number, a Slack channel)
  to a rate, so the service stays under a platform's throughput instead of
  learning it from throttling answers.
- `SenderFactory`, `MessageLookup`, `recipient_of`, `unsendable`,
  `options_text`.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from chat_service.domain.enums import Channel, MessageRole
from chat_service.domain.model import Conversation, Message
from chat_service.ports import (
    ChannelSender,
    Clock,
    ConnectionDirectory,
    ConversationStore,
    DeliveryError,
    OpenedConnection,
    SecretUnreadable,
    StoreUnavailable,
)

# How far back a sender looks for the user's latest message when the reply
# names none (an agent's message): a page of the newest messages.
RECENT_MESSAGES = 50
# Replies whose earlier calls went out but a later one failed (see PartialSends).
MAX_PARTIALLY_SENT = 10_000
# Pacer keys kept before idle ones are forgotten.
MAX_PACED_KEYS = 4096

Payload = dict[str, Any]
SenderFactory = Callable[[ConnectionDirectory, ConversationStore, Clock], ChannelSender]
Part = TypeVar("Part")


class MessageLookup(Protocol):
    """The part of ConversationStore a sender reads."""

    async def get_message(self, tenant_id: str, message_id: str) -> Message | None: ...

    async def list_messages(
        self,
        tenant_id: str,
        conversation_id: str,
        *,
        limit: int,
        after_sequence: int | None = None,
        descending: bool = False,
    ) -> Sequence[Message]: ...


def recipient_of(conversation: Conversation) -> str:
    """The platform user the conversation is with (a wa_id, a PSID, a phone
    number): who the user's messages came from."""
    return conversation.channel_metadata.platform_user_id or conversation.user_id


def unsendable(reason: str) -> DeliveryError:
    """Content the platform cannot take as stored: permanent."""
    return DeliveryError(reason, retryable=False)


def options_text(titles: Sequence[str], limit: int) -> str:
    """A body for an interactive message that has no text of its own (the
    platforms require one): the options themselves, in the reply's language."""
    text = " / ".join(titles)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ------------------------------------------------------------- connection


async def open_connection(
    directory: ConnectionDirectory, conversation: Conversation, channel: Channel, secret: str
) -> OpenedConnection:
    """The conversation's `channel` connection, with `secret` among its
    opened secrets. DeliveryError: retryable while the connections cannot
    be read, else permanent (nothing changes until someone acts)."""
    connection_id = conversation.channel_metadata.additional_data.get("connection_id")
    if not isinstance(connection_id, str) or not connection_id:
        raise DeliveryError(
            "the conversation names no channel connection "
            "(channel_metadata.additional_data.connection_id)",
            retryable=False,
        )
    try:
        opened = await directory.opened(conversation.tenant_id, connection_id)
    except StoreUnavailable as error:
        raise DeliveryError(f"connections unavailable: {error}", retryable=True) from None
    except SecretUnreadable:
        raise DeliveryError(
            f"the secrets of channel connection {connection_id} cannot be opened",
            retryable=False,
        ) from None
    if opened is None:
        raise DeliveryError(
            f"channel connection {connection_id} does not exist (deleted?)", retryable=False
        )
    if opened.connection.channel is not channel:
        raise DeliveryError(
            f"channel connection {connection_id} is a {opened.connection.channel.value} "
            f"connection, not {channel.value}",
            retryable=False,
        )
    if not opened.secrets.get(secret):
        raise DeliveryError(f"channel connection {connection_id} has no {secret}", retryable=False)
    return opened


# --------------------------------------------------------------- answered


@dataclass(frozen=True, slots=True)
class Answered:
    """The user's message a reply goes after: the one it answers (`named`:
    its reply_to_message_id) or, when it names none usable, their latest."""

    message: Message
    named: bool


async def find_answered(
    store: MessageLookup,
    conversation: Conversation,
    message: Message,
    usable: Callable[[Message], bool] = lambda _: True,
) -> Answered | None:
    """The user's message of `conversation` that `message` answers when it
    names one and `usable` holds for it, else their latest `usable` one
    among the RECENT_MESSAGES newest; None when there is none. A store
    outage is a retryable DeliveryError."""
    try:
        if message.reply_to_message_id:
            answered = await store.get_message(message.tenant_id, message.reply_to_message_id)
            if (
                answered is not None
                and answered.role is MessageRole.USER
                and answered.conversation_id == conversation.conversation_id
                and usable(answered)
            ):
                return Answered(answered, named=True)
        recent = await store.list_messages(
            conversation.tenant_id,
            conversation.conversation_id,
            limit=RECENT_MESSAGES,
            descending=True,
        )
    except StoreUnavailable as error:
        raise DeliveryError(f"store unavailable: {error}", retryable=True) from None
    latest = max(
        (m for m in recent if m.role is MessageRole.USER and usable(m)),
        key=lambda m: m.sequence,
        default=None,
    )
    return Answered(latest, named=False) if latest is not None else None


# ---------------------------------------------------------- partial sends


class PartialSends:
    """Sends one stored reply as several calls, in order. The ids of the
    calls made are kept (in memory, per reply, the MAX_PARTIALLY_SENT most
    recent) until the last call succeeds, so that the delivery queue's
    retry after a failed later call resumes after the ones already made."""

    def __init__(self, capacity: int = MAX_PARTIALLY_SENT) -> None:
        self._capacity = capacity
        self._ids: OrderedDict[tuple[str, str], list[str]] = OrderedDict()

    async def send(
        self,
        message: Message,
        parts: Sequence[Part],
        call: Callable[[Part], Awaitable[str]],
    ) -> str:
        """Makes `call` for each of `parts` not made yet for `message`; the
        last call's id ("" when there are no parts)."""
        key = (message.tenant_id, message.message_id)
        ids = list(self._ids.get(key, ()))
        for index, part in enumerate(parts):
            if index < len(ids):
                continue  # made by an earlier attempt
            ids.append(await call(part))
            if index < len(parts) - 1:
                self._keep(key, ids)
        self._ids.pop(key, None)
        return ids[-1] if ids else ""

    def _keep(self, key: tuple[str, str], ids: list[str]) -> None:
        self._ids[key] = list(ids)
        self._ids.move_to_end(key)
        while len(self._ids) > self._capacity:
            self._ids.popitem(last=False)


# ----------------------------------------------------------------- pacing


class Pacer:
    """Spaces the calls for each key at least 1/`rate` seconds apart, in the
    order they asked: any one-second window sees at most `rate` calls per
    key (a token bucket of one token). Waiting callers hold their slot; a
    cancelled wait gives its slot up to nobody (the next caller simply
    waits one interval more), which errs on the slow side."""

    def __init__(
        self,
        rate: float,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if not rate > 0:
            raise ValueError("rate must be positive")
        self._interval = 1.0 / rate
        self._monotonic = monotonic
        self._sleep = sleep
        self._next: dict[str, float] = {}

    async def wait(self, key: str) -> None:
        now = self._monotonic()
        slot = max(now, self._next.get(key, now))
        self._next[key] = slot + self._interval
        if len(self._next) > MAX_PACED_KEYS:  # forget keys that are idle again
            self._next = {k: at for k, at in self._next.items() if at > now}
        if slot > now:
            await self._sleep(slot - now)

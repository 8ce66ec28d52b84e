"""What the WhatsApp and Messenger senders share: finding the conversation's
connection, the 24-hour window, pacing, and sending one stored reply as
one or more Graph API calls.

A stored reply is already adapted to its channel (domain/channels.py,
format_for_channel): each one is one platform message as the user sees
it. Some still take more than one call, because the platforms split what
the content model keeps together (Messenger sends text and an attachment
as two messages; WhatsApp audio and locations carry no caption). The
calls go out in order and the receipt is the last one's id, the call that
carries what defines the message. The ids of calls already made are kept
in memory per message, so a retry after a failed later call does not send
the earlier ones twice.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Protocol

from adapters.channels.graph_api import GraphApi, Pacer
from chat_service.domain.content import MessageContent
from chat_service.domain.enums import Channel, MessageRole
from chat_service.domain.model import Conversation, Message
from chat_service.domain.service_window import (
    last_inbound_time,
    latest_inbound,
    outside_window_reason,
    window_open,
)
from chat_service.ports import (
    ChannelSender,
    Clock,
    ConnectionDirectory,
    ConversationStore,
    DeliveryError,
    DeliveryReceipt,
    OpenedConnection,
    SecretUnreadable,
    StoreUnavailable,
)

# How far back the window check looks for the user's last message when the
# reply names none (an agent's message): a page of the newest messages.
RECENT_MESSAGES = 50
# Messages whose earlier calls went out but a later one failed (see module doc).
MAX_PARTIALLY_SENT = 10_000

Payload = dict[str, Any]
SenderFactory = Callable[[ConnectionDirectory, ConversationStore, Clock], ChannelSender]


class MessageLookup(Protocol):
    """The part of ConversationStore the window check reads."""

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


def unsendable(reason: str) -> DeliveryError:
    """Content the platform cannot take as stored: permanent."""
    return DeliveryError(reason, retryable=False)


def recipient_of(conversation: Conversation) -> str:
    """The platform user the conversation is with (wa_id, PSID)."""
    return conversation.channel_metadata.platform_user_id or conversation.user_id


def options_text(titles: Sequence[str], limit: int) -> str:
    """A body for an interactive message that has no text of its own (both
    platforms require one): the options themselves, in the reply's language."""
    text = " / ".join(titles)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class _PartiallySent:
    """Ids of the calls already made for a message whose later call failed."""

    def __init__(self, capacity: int = MAX_PARTIALLY_SENT) -> None:
        self._capacity = capacity
        self._ids: OrderedDict[tuple[str, str], list[str]] = OrderedDict()

    def get(self, key: tuple[str, str]) -> list[str]:
        return list(self._ids.get(key, ()))

    def keep(self, key: tuple[str, str], ids: list[str]) -> None:
        self._ids[key] = list(ids)
        self._ids.move_to_end(key)
        while len(self._ids) > self._capacity:
            self._ids.popitem(last=False)

    def forget(self, key: tuple[str, str]) -> None:
        self._ids.pop(key, None)


class MetaSender(ABC):
    """A ChannelSender for a Graph API messaging platform."""

    channel: ClassVar[Channel]
    token_field: ClassVar[str]  # the connection secret sent as the bearer token

    def __init__(
        self,
        *,
        api: GraphApi,
        directory: ConnectionDirectory,
        store: MessageLookup,
        clock: Clock,
    ) -> None:
        self._api = api
        self._directory = directory
        self._store = store
        self._clock = clock
        self._partial = _PartiallySent()

    async def send(self, conversation: Conversation, message: Message) -> DeliveryReceipt:
        opened = await self._connection(conversation)
        await self._check_window(conversation, message)
        payloads = self.payloads(message.content, recipient_of(conversation))
        account = opened.connection.account_id
        token = opened.secrets.get(self.token_field, "")
        key = (message.tenant_id, message.message_id)
        ids = self._partial.get(key)
        for index, payload in enumerate(payloads):
            if index < len(ids):
                continue  # sent by an earlier attempt
            await self.pacer_for(payload).wait(account)
            answer = await self._api.post(self.path(account), payload, token=token)
            ids.append(self.platform_id(answer))
            if index < len(payloads) - 1:
                self._partial.keep(key, ids)
        self._partial.forget(key)
        return DeliveryReceipt(platform_message_id=ids[-1] if ids else "")

    # ------------------------------------------------------ per platform

    @abstractmethod
    def payloads(self, content: MessageContent, recipient: str) -> list[Payload]:
        """The calls that send `content`, in order; DeliveryError (permanent)
        for content the platform cannot take."""

    @abstractmethod
    def path(self, account_id: str) -> str: ...

    @abstractmethod
    def platform_id(self, answer: dict[str, Any]) -> str: ...

    @abstractmethod
    def pacer_for(self, payload: Payload) -> Pacer: ...

    # ------------------------------------------------------------ shared

    async def _connection(self, conversation: Conversation) -> OpenedConnection:
        connection_id = conversation.channel_metadata.additional_data.get("connection_id")
        if not isinstance(connection_id, str) or not connection_id:
            raise DeliveryError(
                "the conversation names no channel connection (channel_metadata."
                "additional_data.connection_id)",
                retryable=False,
            )
        try:
            opened = await self._directory.opened(conversation.tenant_id, connection_id)
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
        if opened.connection.channel is not self.channel:
            raise DeliveryError(
                f"channel connection {connection_id} is a {opened.connection.channel.value} "
                f"connection, not {self.channel.value}",
                retryable=False,
            )
        if not opened.secrets.get(self.token_field):
            raise DeliveryError(
                f"channel connection {connection_id} has no {self.token_field}", retryable=False
            )
        return opened

    async def _check_window(self, conversation: Conversation, message: Message) -> None:
        """Refuse before any call when the user's last message is 24 hours old."""
        try:
            last = await self._last_inbound(conversation, message)
        except StoreUnavailable as error:
            raise DeliveryError(f"store unavailable: {error}", retryable=True) from None
        at = last_inbound_time(last) if last is not None else None
        if not window_open(at, self._clock.now()):
            raise DeliveryError(outside_window_reason(self.channel), retryable=False)

    async def _last_inbound(self, conversation: Conversation, message: Message) -> Message | None:
        # A bot reply names the message it answers. Later messages of the
        # user only extend the window, so this never calls a closed window open.
        if message.reply_to_message_id:
            answered = await self._store.get_message(message.tenant_id, message.reply_to_message_id)
            if (
                answered is not None
                and answered.role is MessageRole.USER
                and answered.conversation_id == conversation.conversation_id
            ):
                return answered
        recent = await self._store.list_messages(
            conversation.tenant_id,
            conversation.conversation_id,
            limit=RECENT_MESSAGES,
            descending=True,
        )
        return latest_inbound(recent)

"""What the WhatsApp and Messenger senders share: the 24-hour window and
sending one stored reply as one or more Graph API calls (finding the
connection and the partial sends come from outbound.py, as for every
platform).

A stored reply is already adapted to its channel (domain/channels.py,
format_for_channel): each one is one platform message as the user sees
it. Some still take more than one call, because the platforms split what
the content model keeps together (Messenger sends text and an attachment
as two messages; WhatsApp audio and locations carry no caption). The
calls go out in order and the receipt is the last one's id, the call that
carries what defines the message (outbound.PartialSends).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from adapters.channels.graph_api import GraphApi
from adapters.channels.outbound import (
    MessageLookup,
    Pacer,
    PartialSends,
    Payload,
    find_answered,
    open_connection,
    recipient_of,
)
from chat_service.domain.content import MessageContent
from chat_service.domain.enums import Channel
from chat_service.domain.model import Conversation, Message
from chat_service.domain.service_window import (
    last_inbound_time,
    outside_window_reason,
    window_open,
)
from chat_service.ports import (
    Clock,
    ConnectionDirectory,
    DeliveryError,
    DeliveryReceipt,
)


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
        self._partial = PartialSends()

    async def send(self, conversation: Conversation, message: Message) -> DeliveryReceipt:
        opened = await open_connection(
            self._directory, conversation, self.channel, self.token_field
        )
        await self._check_window(conversation, message)
        payloads = self.payloads(message.content, recipient_of(conversation))
        account = opened.connection.account_id
        token = opened.secrets.get(self.token_field, "")

        async def post(payload: Payload) -> str:
            await self.pacer_for(payload).wait(account)
            answer = await self._api.post(self.path(account), payload, token=token)
            return self.platform_id(answer)

        sent = await self._partial.send(message, payloads, post)
        return DeliveryReceipt(platform_message_id=sent)

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

    async def _check_window(self, conversation: Conversation, message: Message) -> None:
        """Refuse before any call when the user's last message is 24 hours
        old. A bot reply names the message it answers; later messages of the
        user only extend the window, so this never calls a closed window open."""
        last = await find_answered(self._store, conversation, message)
        at = last_inbound_time(last.message) if last is not None else None
        if not window_open(at, self._clock.now()):
            raise DeliveryError(outside_window_reason(self.channel), retryable=False)

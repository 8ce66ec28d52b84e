"""What the channel sender tests put around the real sender and the real
emulator: a connection directory, the store's two reads a sender makes, a
settable clock, fake time for pacing, builders for a platform conversation
with the user's message and a reply to it, and `SenderRig`, the base of
each platform's rig (the sender, its emulator, the conversation)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Generic, TypeVar

import pytest

from chat_service.domain.connections import ChannelConnection
from chat_service.domain.content import MessageContent
from chat_service.domain.enums import Channel, DeliveryStatus, MessageRole
from chat_service.domain.model import ChannelMetadata, Conversation, Message
from chat_service.ports import ChannelSender, DeliveryError, OpenedConnection
from tests.builders import T0, TENANT, make_conversation, make_message

EmulatorT = TypeVar("EmulatorT")
SenderT = TypeVar("SenderT", bound=ChannelSender)


class FakeDirectory:
    """ConnectionDirectory: the connections the test opened."""

    def __init__(self, *connections: OpenedConnection) -> None:
        self._by_id = {(c.connection.tenant_id, c.connection.connection_id): c for c in connections}

    async def opened(self, tenant_id: str, connection_id: str) -> OpenedConnection | None:
        await asyncio.sleep(0)
        return self._by_id.get((tenant_id, connection_id))

    async def for_channel(
        self, tenant_id: str, channel: Channel, *, fresh: bool = False
    ) -> Sequence[OpenedConnection]:
        await asyncio.sleep(0)
        return [
            c
            for (tenant, _), c in self._by_id.items()
            if tenant == tenant_id and c.connection.channel is channel
        ]


class MessageShelf:
    """The store's reads the window check makes (get_message, list_messages)."""

    def __init__(self, *messages: Message) -> None:
        self._messages = {m.message_id: m for m in messages}

    def put(self, *messages: Message) -> None:
        self._messages.update({m.message_id: m for m in messages})

    async def get_message(self, tenant_id: str, message_id: str) -> Message | None:
        await asyncio.sleep(0)
        found = self._messages.get(message_id)
        return found if found is not None and found.tenant_id == tenant_id else None

    async def list_messages(
        self,
        tenant_id: str,
        conversation_id: str,
        *,
        limit: int,
        after_sequence: int | None = None,
        descending: bool = False,
    ) -> Sequence[Message]:
        await asyncio.sleep(0)
        found = sorted(
            (
                m
                for m in self._messages.values()
                if m.tenant_id == tenant_id and m.conversation_id == conversation_id
            ),
            key=lambda m: m.sequence,
            reverse=descending,
        )
        return found[:limit]


@dataclass
class SettableClock:
    """Clock port at a time the test sets."""

    at: datetime = T0

    def now(self) -> datetime:
        return self.at


@dataclass
class FakeTime:
    """A monotonic clock and a sleep that moves it instead of waiting."""

    now: float = 1000.0
    sleeps: list[float] = field(default_factory=list)

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += max(0.0, seconds)
        await asyncio.sleep(0)


def opened_connection(
    channel: Channel,
    account_id: str,
    secrets: dict[str, str],
    connection_id: str = "conn-1",
    *,
    public: Mapping[str, str] | None = None,
    tenant_id: str = TENANT,
) -> OpenedConnection:
    """A connection as the directory hands it out: `secrets` opened.
    `public` defaults to Meta's (the account id as phone_number_id, or
    page_id)."""
    if public is None:
        field_name = "phone_number_id" if channel is Channel.WHATSAPP else "page_id"
        public = {field_name: account_id}
    connection = ChannelConnection(
        connection_id=connection_id,
        tenant_id=tenant_id,
        channel=channel,
        account_id=account_id,
        display_name="test",
        webhook_url="",
        public=dict(public),
        secrets=dict.fromkeys(secrets, "sealed"),
        fingerprints=dict.fromkeys(secrets, "fp"),
        created_at=T0,
        updated_at=T0,
    )
    return OpenedConnection(connection=connection, secrets=secrets)


def platform_conversation(
    channel: Channel, user: str, connection_id: str = "conn-1"
) -> Conversation:
    return make_conversation(
        channel=channel,
        user_id=user,
        channel_metadata=ChannelMetadata(
            platform_user_id=user, additional_data={"connection_id": connection_id}
        ),
    )


def user_message(conversation: Conversation, at: datetime, sequence: int = 1) -> Message:
    return make_message(conversation, sequence, "hi", created_at=at, client_time=at)


def bot_reply(
    conversation: Conversation, answered: Message | None, content: MessageContent, sequence: int
) -> Message:
    return make_message(
        conversation,
        sequence,
        role=MessageRole.BOT,
        content=content,
        created_at=(answered.created_at if answered else T0) + timedelta(seconds=1),
        delivery_status=DeliveryStatus.PENDING,
        reply_to_message_id=answered.message_id if answered else "",
    )


async def failure(sending: Awaitable[object]) -> DeliveryError:
    """The DeliveryError `sending` raises (the test fails if it raises none)."""
    with pytest.raises(DeliveryError) as caught:
        await sending
    return caught.value


@dataclass
class SenderRig(Generic[EmulatorT, SenderT]):
    """A real sender and the emulator it sends to, the conversation and the
    user's message a reply answers (in `shelf`, the store's reads)."""

    emulator: EmulatorT
    sender: SenderT
    shelf: MessageShelf
    conversation: Conversation
    inbound: Message

    def reply(
        self, content: MessageContent, sequence: int = 2, *, to: Message | None = None
    ) -> Message:
        """A stored bot reply answering `to` (the user's message by default)."""
        message = bot_reply(self.conversation, to or self.inbound, content, sequence)
        self.shelf.put(message)
        return message

    async def send(self, content: MessageContent, sequence: int = 2) -> str:
        """Sends a reply of `content`; the receipt's platform message id."""
        receipt = await self.sender.send(self.conversation, self.reply(content, sequence))
        return receipt.platform_message_id

    async def failure(self, content: MessageContent, *, to: Message | None = None) -> DeliveryError:
        """Sends a reply of `content`; the DeliveryError it fails with."""
        return await failure(self.sender.send(self.conversation, self.reply(content, to=to)))

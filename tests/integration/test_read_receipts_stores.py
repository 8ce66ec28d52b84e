"""Read receipts over every real store: a receipt that fails midway leaves no
unread gap, and a delivery racing a receipt to FAILED is never made READ."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from adapters.mongo import MongoStore
from adapters.mongo.transactions import TransactionalWrites
from chat_service.domain.enums import DeliveryStatus, MessageRole
from chat_service.domain.errors import Unavailable
from chat_service.domain.events import DomainEvent, EventType
from chat_service.domain.model import Conversation, Message
from chat_service.pipeline.read_receipts import MarkRead
from chat_service.ports import ConversationStore, StoreUnavailable
from tests.builders import T0, TENANT, create_change, make_conversation, make_event, make_message
from tests.fakes import SteppingClock
from tests.integration.test_store_contract import STORE_FACTORIES

FIELD = "read_through_sequence"


@pytest.fixture(params=list(STORE_FACTORIES))
async def store(request: pytest.FixtureRequest) -> AsyncIterator[ConversationStore]:
    opened = await STORE_FACTORIES[request.param](request)
    yield opened
    await opened.close()


# nx-27017 cannot run transactions side by side (see test_store_contract.py):
# the race runs on the stores that take concurrent writers here.
CONCURRENT = [name for name in STORE_FACTORIES if name != "mongo-transactions"]


@pytest.fixture(params=CONCURRENT)
async def concurrent_store(request: pytest.FixtureRequest) -> AsyncIterator[ConversationStore]:
    opened = await STORE_FACTORIES[request.param](request)
    yield opened
    await opened.close()


async def bot_conversation(
    store: ConversationStore, pairs: int
) -> tuple[Conversation, list[Message]]:
    """User messages at odd sequences, each answered by a SENT bot message."""
    conversation = make_conversation()
    messages = [
        make_message(
            conversation,
            sequence,
            role=MessageRole.USER if sequence % 2 else MessageRole.BOT,
            delivery_status=DeliveryStatus.SENT,
        )
        for sequence in range(1, 2 * pairs + 1)
    ]
    change = create_change(conversation, messages)
    await store.write(change)
    return change.conversation, [m for m in messages if m.role is MessageRole.BOT]


async def statuses(store: ConversationStore, messages: list[Message]) -> list[DeliveryStatus]:
    found = [await store.get_message(TENANT, m.message_id) for m in messages]
    return [m.delivery_status for m in found if m is not None]


async def test_a_failed_receipt_is_finished_by_the_next(
    store: ConversationStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    conversation, bots = await bot_conversation(store, 4)
    real_update = store.update_delivery_status
    calls = 0

    async def third_write_fails(
        tenant_id: str,
        message_id: str,
        status: DeliveryStatus,
        event: DomainEvent | None = None,
    ) -> bool:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise StoreUnavailable("connection reset")
        return await real_update(tenant_id, message_id, status, event)

    monkeypatch.setattr(store, "update_delivery_status", third_write_fails)
    mark = MarkRead(store=store, clock=SteppingClock(T0), on_change=lambda m, s: None)

    with pytest.raises(Unavailable):
        await mark(TENANT, conversation.conversation_id, 8, field=FIELD)
    read, sent = DeliveryStatus.READ, DeliveryStatus.SENT
    assert await statuses(store, bots) == [read, read, sent, sent]  # a prefix

    assert await mark(TENANT, conversation.conversation_id, 8, field=FIELD) == 2
    assert await statuses(store, bots) == [read] * 4


async def test_read_and_failed_racing_on_a_message_one_wins(
    concurrent_store: ConversationStore,
) -> None:
    store = concurrent_store
    conversation, bots = await bot_conversation(store, 6)

    def event(message: Message) -> DomainEvent:
        return make_event(conversation, EventType.DELIVERY_UPDATED, message)

    outcomes = await asyncio.gather(
        *(
            store.update_delivery_status(TENANT, m.message_id, status, event(m))
            for m in bots
            for status in (DeliveryStatus.FAILED, DeliveryStatus.READ)
        )
    )

    final = await statuses(store, bots)
    for index, status in enumerate(final):
        failed_won, read_won = outcomes[2 * index], outcomes[2 * index + 1]
        # Exactly one move applied, and the status is the winner's.
        assert failed_won != read_won
        assert status is (DeliveryStatus.FAILED if failed_won else DeliveryStatus.READ)


class FailsAfterRead:
    """The transactional writer's messages collection, where a delivery turns
    FAILED (outside the transaction) right after the transaction read SENT:
    the interleaving a server without write-conflict detection lets through."""

    def __init__(self, messages: Any, message_id: str) -> None:
        self._messages = messages
        self._message_id = message_id

    async def find_one(self, *args: Any, **kwargs: Any) -> Any:
        found = await self._messages.find_one(*args, **kwargs)
        if found is not None and self._message_id:
            await self._messages.update_one(
                {"_id": found["_id"]}, {"$set": {"delivery_status": DeliveryStatus.FAILED.value}}
            )
            self._message_id = ""
        return found

    def __getattr__(self, name: str) -> Any:
        return getattr(self._messages, name)


async def test_the_transactional_path_never_moves_failed_to_read(
    mongo_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await MongoStore.open(mongo_uri, transactions=True)
    try:
        conversation, [bot] = await bot_conversation(store, 1)
        writes = store._writes  # reached into for the interleaving
        assert isinstance(writes, TransactionalWrites)
        monkeypatch.setattr(writes, "_messages", FailsAfterRead(writes._messages, bot.message_id))
        event = make_event(conversation, EventType.DELIVERY_UPDATED, bot)

        moved = await store.update_delivery_status(
            TENANT, bot.message_id, DeliveryStatus.READ, event
        )

        assert not moved
        assert await statuses(store, [bot]) == [DeliveryStatus.FAILED]
    finally:
        await store.close()

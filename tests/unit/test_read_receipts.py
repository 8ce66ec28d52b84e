"""MarkRead on fakes: what a receipt marks, and that a failed one leaves no gap."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

import pytest

from chat_service.domain.enums import DeliveryStatus, MessageRole
from chat_service.domain.errors import InvalidArgument, NotFound, Unavailable
from chat_service.domain.events import DomainEvent, EventType
from chat_service.domain.model import Conversation, Message
from chat_service.pipeline.read_receipts import MarkRead
from chat_service.ports import StoreUnavailable
from tests.builders import OTHER_TENANT, T0, TENANT, create_change, make_conversation, make_message
from tests.fakes import InMemoryStore, SteppingClock

FIELD = "read.read_through_sequence"


class FlakyStore(InMemoryStore):
    """Fails the `fail_on`-th delivery-status write (1-based; 0: never), and
    can run `before_update` just before each one (to interleave a peer)."""

    def __init__(self) -> None:
        super().__init__()
        self.updates = 0
        self.fail_on = 0
        self.before_update: Callable[[str, DeliveryStatus], Awaitable[None]] | None = None

    async def update_delivery_status(
        self,
        tenant_id: str,
        message_id: str,
        status: DeliveryStatus,
        event: DomainEvent | None = None,
        *,
        platform_message_id: str = "",
        channel_data: Mapping[str, str | int | bool] | None = None,
    ) -> bool:
        hook, self.before_update = self.before_update, None  # runs once
        if hook is not None:
            await hook(message_id, status)
        self.updates += 1
        if self.updates == self.fail_on:
            raise StoreUnavailable("disk gone")
        return await super().update_delivery_status(
            tenant_id,
            message_id,
            status,
            event,
            platform_message_id=platform_message_id,
            channel_data=channel_data,
        )


class Receipts:
    def __init__(self, store: FlakyStore) -> None:
        self.store = store
        self.changed: list[tuple[str, DeliveryStatus]] = []
        self.mark = MarkRead(
            store=store,
            clock=SteppingClock(T0),
            on_change=lambda message, status: self.changed.append((message.message_id, status)),
        )

    async def __call__(self, conversation: Conversation, through: int) -> int:
        return await self.mark(TENANT, conversation.conversation_id, through, field=FIELD)

    async def statuses(self, conversation: Conversation) -> dict[int, DeliveryStatus]:
        """Sequence -> status of the bot's messages."""
        messages = await self.store.list_messages(
            TENANT, conversation.conversation_id, limit=10_000
        )
        return {m.sequence: m.delivery_status for m in messages if m.role is MessageRole.BOT}


async def conversation_of(store: InMemoryStore, pairs: int) -> tuple[Conversation, list[Message]]:
    """`pairs` user messages, each answered by a SENT bot message (even sequences)."""
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
    return change.conversation, messages


@pytest.fixture
def store() -> FlakyStore:
    return FlakyStore()


@pytest.fixture
def receipts(store: FlakyStore) -> Receipts:
    return Receipts(store)


async def test_marks_the_bots_messages_through_the_sequence(
    store: FlakyStore, receipts: Receipts
) -> None:
    conversation, messages = await conversation_of(store, 4)

    assert await receipts(conversation, 5) == 2

    assert await receipts.statuses(conversation) == {
        2: DeliveryStatus.READ,
        4: DeliveryStatus.READ,
        6: DeliveryStatus.SENT,
        8: DeliveryStatus.SENT,
    }
    assert receipts.changed == [
        (messages[1].message_id, DeliveryStatus.READ),
        (messages[3].message_id, DeliveryStatus.READ),
    ]
    user = await store.get_message(TENANT, messages[0].message_id)
    assert user is not None
    assert user.delivery_status is DeliveryStatus.SENT
    events = await store.claim_outbox("test", limit=100, lease_seconds=60)
    assert [(e.event.event_type, e.event.message_id) for e in events] == [
        (EventType.DELIVERY_UPDATED, messages[1].message_id),
        (EventType.DELIVERY_UPDATED, messages[3].message_id),
    ]


async def test_a_repeated_or_older_receipt_marks_nothing(
    store: FlakyStore, receipts: Receipts
) -> None:
    conversation, _ = await conversation_of(store, 3)
    assert await receipts(conversation, 6) == 3
    writes = store.updates

    assert await receipts(conversation, 6) == 0
    assert await receipts(conversation, 3) == 0
    assert store.updates == writes  # nothing tried again


async def test_a_receipt_stops_at_what_an_earlier_one_marked(
    store: FlakyStore, receipts: Receipts
) -> None:
    conversation, _ = await conversation_of(store, 4)
    await receipts(conversation, 4)
    writes = store.updates

    assert await receipts(conversation, 8) == 2

    assert store.updates - writes == 2  # the cost is what it marks
    assert set((await receipts.statuses(conversation)).values()) == {DeliveryStatus.READ}


async def test_a_receipt_spans_more_than_a_page(store: FlakyStore, receipts: Receipts) -> None:
    conversation, _ = await conversation_of(store, 130)  # 260 messages: pages of 100

    assert await receipts(conversation, 260) == 130

    assert set((await receipts.statuses(conversation)).values()) == {DeliveryStatus.READ}


async def test_a_failed_receipt_leaves_no_gap_for_the_next(
    store: FlakyStore, receipts: Receipts
) -> None:
    conversation, _ = await conversation_of(store, 4)
    store.fail_on = 3  # the third of four writes fails

    with pytest.raises(Unavailable):
        await receipts(conversation, 8)
    # What it marked is a prefix: the next receipt carries on from there.
    statuses = await receipts.statuses(conversation)
    read = [s for s, status in sorted(statuses.items()) if status is DeliveryStatus.READ]
    assert read == sorted(statuses)[: len(read)]
    store.fail_on = 0

    await receipts(conversation, 8)

    assert set((await receipts.statuses(conversation)).values()) == {DeliveryStatus.READ}


async def test_a_failed_delivery_stays_failed(store: FlakyStore, receipts: Receipts) -> None:
    conversation, messages = await conversation_of(store, 3)
    failed = messages[3]  # sequence 4
    assert await store.update_delivery_status(TENANT, failed.message_id, DeliveryStatus.FAILED)

    assert await receipts(conversation, 6) == 2

    assert await receipts.statuses(conversation) == {
        2: DeliveryStatus.READ,
        4: DeliveryStatus.FAILED,
        6: DeliveryStatus.READ,
    }
    assert (failed.message_id, DeliveryStatus.READ) not in receipts.changed


async def test_a_delivery_failing_during_the_receipt_stays_failed(
    store: FlakyStore, receipts: Receipts
) -> None:
    conversation, messages = await conversation_of(store, 3)
    failing = messages[1]  # sequence 2: read as SENT, then fails before it is marked

    async def delivery_fails(message_id: str, status: DeliveryStatus) -> None:
        assert await InMemoryStore.update_delivery_status(
            store, TENANT, failing.message_id, DeliveryStatus.FAILED
        )

    store.before_update = delivery_fails

    assert await receipts(conversation, 6) == 2

    assert await receipts.statuses(conversation) == {
        2: DeliveryStatus.FAILED,
        4: DeliveryStatus.READ,
        6: DeliveryStatus.READ,
    }
    assert [mid for mid, _ in receipts.changed] == [messages[3].message_id, messages[5].message_id]


@pytest.mark.parametrize("through", [0, -1, 7])
async def test_a_sequence_outside_the_conversation_is_invalid(
    store: FlakyStore, receipts: Receipts, through: int
) -> None:
    conversation, _ = await conversation_of(store, 3)

    with pytest.raises(InvalidArgument) as caught:
        await receipts(conversation, through)

    assert [v.field for v in caught.value.violations] == [FIELD]
    assert store.updates == 0


async def test_unknown_and_foreign_conversations_are_not_found(
    store: FlakyStore, receipts: Receipts
) -> None:
    theirs = make_conversation(tenant_id=OTHER_TENANT)
    await store.write(create_change(theirs, [make_message(theirs, 1, role=MessageRole.BOT)]))

    for conversation_id in ("no-such-conversation", theirs.conversation_id):
        with pytest.raises(NotFound):
            await receipts.mark(TENANT, conversation_id, 1, field=FIELD)
    assert store.updates == 0

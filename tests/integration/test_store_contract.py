"""The ConversationStore contract, run against every store implementation.

To add a store, add a factory to STORE_FACTORIES; the tests stay as they are.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import closing
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import pytest

from adapters.mongo import MongoStore
from adapters.sqlite import SqliteStore
from adapters.sqlite.connections import connect
from adapters.sqlite.schema import DELIVERY_LEASES, MIGRATIONS
from adapters.sqlite.writes import EncodedChange, write_change
from chat_service.domain.content import MessageContent
from chat_service.domain.enums import Channel, ConversationStatus, DeliveryStatus, MessageRole
from chat_service.domain.events import DomainEvent, EventType, OutboxEntry
from chat_service.domain.model import ChannelMetadata, Conversation, Message
from chat_service.pipeline.outbox_relay import OutboxRelay, RelaySettings
from chat_service.ports import (
    ConversationCursor,
    ConversationQuery,
    ConversationStore,
    DeliveryClaimant,
    DuplicateMessage,
    EventsPruned,
    VersionConflict,
)
from tests.builders import (
    OTHER_TENANT,
    T0,
    TENANT,
    create_change,
    make_conversation,
    make_event,
    make_message,
    make_record,
    update_change,
)
from tests.fakes import InMemoryStore

# Stores must read iter_messages in batches; factories make them small so
# that a test with MORE_THAN_A_BATCH messages crosses batch boundaries.
SMALL_BATCH = 4
MORE_THAN_A_BATCH = 11

StoreFactory = Callable[[pytest.FixtureRequest], Awaitable[ConversationStore]]


async def _memory_store(request: pytest.FixtureRequest) -> ConversationStore:
    return InMemoryStore()


async def _sqlite_store(request: pytest.FixtureRequest) -> ConversationStore:
    tmp_path: Path = request.getfixturevalue("tmp_path")
    return await SqliteStore.open(tmp_path / "store" / "chat.db", iter_batch_size=SMALL_BATCH)


async def _mongo_store(request: pytest.FixtureRequest) -> ConversationStore:
    # MongoDB as the store finds it: nx-27017 answers like a standalone
    # server, so changes take the journalled write path (no transactions).
    uri: str = request.getfixturevalue("mongo_uri")
    return await MongoStore.open(uri, iter_batch_size=SMALL_BATCH)


async def _mongo_transactions_store(request: pytest.FixtureRequest) -> ConversationStore:
    # The transactional path of replica sets and mongos, forced on
    # nx-27017. Its transactions are right one at a time but not isolated
    # from each other (see test_mongo_store.py), which is why the store
    # does not pick them there by itself; these tests run one at a time.
    uri: str = request.getfixturevalue("mongo_uri")
    return await MongoStore.open(uri, iter_batch_size=SMALL_BATCH, transactions=True)


STORE_FACTORIES: dict[str, StoreFactory] = {
    "memory": _memory_store,
    "sqlite": _sqlite_store,
    "mongo": _mongo_store,
    "mongo-transactions": _mongo_transactions_store,
}


@pytest.fixture(params=list(STORE_FACTORIES))
async def store(request: pytest.FixtureRequest) -> AsyncIterator[ConversationStore]:
    opened = await STORE_FACTORIES[request.param](request)
    yield opened
    await opened.close()


# ------------------------------------------------------------------ helpers


async def create(
    store: ConversationStore, conversation: Conversation | None = None, texts: tuple[str, ...] = ()
) -> tuple[Conversation, list[Message]]:
    """Stores a new conversation holding one message per text."""
    conversation = conversation or make_conversation()
    messages = [make_message(conversation, i, text) for i, text in enumerate(texts, start=1)]
    change = create_change(conversation, messages)
    await store.write(change)
    return change.conversation, messages


async def outbox_events(store: ConversationStore) -> list[DomainEvent]:
    """Every unpublished event; the zero lease leaves them claimable by others."""
    entries = await store.claim_outbox("inspector", limit=10_000, lease_seconds=0)
    return [entry.event for entry in entries]


async def all_conversations(
    store: ConversationStore, tenant_id: str, query: ConversationQuery, page_size: int
) -> list[list[Conversation]]:
    """Walks every page of a listing (failing fast if the pages never end)."""
    pages: list[list[Conversation]] = []
    after: ConversationCursor | None = None
    for _ in range(100):
        page = list(await store.list_conversations(tenant_id, query, limit=page_size, after=after))
        if not page:
            return pages
        pages.append(page)
        after = ConversationCursor(page[-1].created_at, page[-1].conversation_id)
    pytest.fail("pagination never reached an empty page")


async def status_of(store: ConversationStore, message_id: str) -> DeliveryStatus:
    message = await store.get_message(TENANT, message_id)
    assert message is not None
    return message.delivery_status


def ids(conversations: list[Conversation]) -> list[str]:
    return [c.conversation_id for c in conversations]


# ----------------------------------------------------- create, read, scoping


async def test_a_created_conversation_and_its_messages_read_back_equal(
    store: ConversationStore,
) -> None:
    conversation = make_conversation(session_id="s-1", status_reason="new")
    inbound = make_message(
        conversation,
        1,
        content=MessageContent.of_text("Grüß Gott", language="de"),
        client_time=T0 - timedelta(seconds=3),
        fingerprint="sha256:abc",
    )
    reply = make_message(
        conversation, 2, "Hello!", role=MessageRole.BOT, reply_to_message_id=inbound.message_id
    )
    event = make_event(conversation, EventType.CONVERSATION_STARTED, metadata={"a": [1, "x"]})
    change = create_change(conversation, [inbound, reply], [event])

    await store.write(change)

    assert await store.get_conversation(TENANT, conversation.conversation_id) == change.conversation
    assert await store.get_message(TENANT, inbound.message_id) == inbound
    assert await store.get_message(TENANT, reply.message_id) == reply
    assert await store.list_messages(TENANT, conversation.conversation_id, limit=10) == [
        inbound,
        reply,
    ]
    assert await outbox_events(store) == [event]


async def test_an_update_replaces_the_conversation(store: ConversationStore) -> None:
    conversation, _ = await create(store, texts=("hi",))
    message = make_message(conversation, 2)
    change = update_change(
        conversation,
        [message],
        status=ConversationStatus.ESCALATED,
        updated_at=T0 + timedelta(minutes=1),
    )

    await store.write(change)

    stored = await store.get_conversation(TENANT, conversation.conversation_id)
    assert stored == change.conversation
    assert stored.version == 2
    assert stored.last_sequence == 2


async def test_unknown_ids_read_as_absent(store: ConversationStore) -> None:
    assert await store.get_conversation(TENANT, "no-such-conversation") is None
    assert await store.get_message(TENANT, "no-such-message") is None
    assert await store.get_record(TENANT, "no-such-message") is None
    assert await store.list_messages(TENANT, "no-such-conversation", limit=10) == []


async def test_another_tenant_sees_nothing(store: ConversationStore) -> None:
    conversation, messages = await create(store, texts=("secret",))
    await store.write(update_change(conversation, record=make_record(messages[0]), updated_at=T0))
    cid, mid = conversation.conversation_id, messages[0].message_id

    assert await store.get_conversation(OTHER_TENANT, cid) is None
    assert await store.get_message(OTHER_TENANT, mid) is None
    assert await store.get_record(OTHER_TENANT, mid) is None
    assert await store.list_messages(OTHER_TENANT, cid, limit=10) == []
    assert [m async for m in store.iter_messages(OTHER_TENANT, cid)] == []
    everything = ConversationQuery(search_query="secret")
    assert await store.list_conversations(OTHER_TENANT, everything, limit=10) == []
    assert not await store.update_delivery_status(OTHER_TENANT, mid, DeliveryStatus.SENT)
    # ...while the owner still sees all of it, untouched.
    assert await store.get_message(TENANT, mid) == messages[0]
    assert ids(list(await store.list_conversations(TENANT, everything, limit=10))) == [cid]


async def test_another_tenant_cannot_update_a_conversation(store: ConversationStore) -> None:
    conversation, _ = await create(store)
    hijack = update_change(dataclasses.replace(conversation, tenant_id=OTHER_TENANT))

    with pytest.raises(VersionConflict):
        await store.write(hijack)

    assert await store.get_conversation(TENANT, conversation.conversation_id) == conversation


async def test_the_same_message_id_under_two_tenants_is_fine(store: ConversationStore) -> None:
    ours, _ = await create(store)
    theirs, _ = await create(store, make_conversation(tenant_id=OTHER_TENANT))
    our_message = make_message(ours, 1, message_id="shared-id")
    their_message = make_message(theirs, 1, message_id="shared-id")

    await store.write(update_change(ours, [our_message]))
    await store.write(update_change(theirs, [their_message]))

    assert await store.get_message(TENANT, "shared-id") == our_message
    assert await store.get_message(OTHER_TENANT, "shared-id") == their_message


# ------------------------------------------------------------ refused writes


async def test_a_stale_version_conflicts_and_writes_nothing(store: ConversationStore) -> None:
    conversation, _ = await create(store)
    await store.write(update_change(conversation))  # now at version 2
    current = await store.get_conversation(TENANT, conversation.conversation_id)
    message = make_message(conversation, 1)
    stale = update_change(
        conversation,  # still at version 1
        [message],
        [make_event(conversation, message=message)],
        make_record(message),
        status=ConversationStatus.COMPLETED,
    )

    with pytest.raises(VersionConflict):
        await store.write(stale)

    assert await store.get_conversation(TENANT, conversation.conversation_id) == current
    assert await store.get_message(TENANT, message.message_id) is None
    assert await store.get_record(TENANT, message.message_id) is None
    assert await outbox_events(store) == []


async def test_creating_an_existing_conversation_conflicts(store: ConversationStore) -> None:
    conversation, _ = await create(store)

    with pytest.raises(VersionConflict):
        await store.write(create_change(dataclasses.replace(conversation, user_id="someone")))

    assert await store.get_conversation(TENANT, conversation.conversation_id) == conversation


async def test_updating_a_missing_conversation_conflicts(store: ConversationStore) -> None:
    never_stored = make_conversation()

    with pytest.raises(VersionConflict):
        await store.write(update_change(never_stored))

    assert await store.get_conversation(TENANT, never_stored.conversation_id) is None


async def test_a_reused_message_id_is_a_duplicate_and_writes_nothing(
    store: ConversationStore,
) -> None:
    _, [first] = await create(store, texts=("first",))
    elsewhere, _ = await create(store)  # the id is taken tenant-wide
    again = make_message(elsewhere, 1, message_id=first.message_id)
    change = update_change(
        elsewhere, [again], [make_event(elsewhere, message=again)], make_record(again)
    )

    with pytest.raises(DuplicateMessage) as raised:
        await store.write(change)

    assert raised.value.message_id == first.message_id
    assert await store.get_conversation(TENANT, elsewhere.conversation_id) == elsewhere
    assert await store.get_message(TENANT, first.message_id) == first
    assert await store.list_messages(TENANT, elsewhere.conversation_id, limit=10) == []
    assert await store.get_record(TENANT, first.message_id) is None
    assert await outbox_events(store) == []


async def test_a_new_conversation_whose_message_id_is_taken_is_not_created(
    store: ConversationStore,
) -> None:
    # SendMessage writes a message without looking for its id first: a retry
    # of a message that started a conversation starts another one, and only
    # the store's refusal tells it is a retry. That refusal must leave no
    # empty conversation behind.
    _, [first] = await create(store, texts=("first",))
    other = make_conversation()
    again = make_message(other, 1, message_id=first.message_id)

    with pytest.raises(DuplicateMessage):
        await store.write(
            create_change(other, [again], [make_event(other, message=again)], make_record(again))
        )

    assert await store.get_conversation(TENANT, other.conversation_id) is None
    assert await store.get_message(TENANT, first.message_id) == first
    assert await store.list_conversations(TENANT, ConversationQuery(), limit=10) == [
        await store.get_conversation(TENANT, first.conversation_id)
    ]
    assert await outbox_events(store) == []


async def test_a_taken_sequence_is_a_duplicate_and_writes_nothing(
    store: ConversationStore,
) -> None:
    conversation, [first] = await create(store, texts=("first",))
    fresh = make_message(conversation, 2)
    clash = make_message(conversation, 1)  # sequence 1 is taken
    change = update_change(
        conversation,
        [fresh, clash],
        [make_event(conversation, message=fresh)],
        make_record(fresh),
    )

    with pytest.raises(DuplicateMessage) as raised:
        await store.write(change)

    assert raised.value.message_id == clash.message_id
    assert await store.get_conversation(TENANT, conversation.conversation_id) == conversation
    assert await store.list_messages(TENANT, conversation.conversation_id, limit=10) == [first]
    assert await store.get_message(TENANT, fresh.message_id) is None
    assert await store.get_record(TENANT, fresh.message_id) is None
    assert await outbox_events(store) == []


# ---------------------------------------------------------------- records


async def test_an_idempotency_record_reads_back_equal(store: ConversationStore) -> None:
    conversation, [inbound] = await create(store, texts=("hi",))
    reply = make_message(conversation, 2, "Hello!", role=MessageRole.BOT)
    record = make_record(inbound, reply)

    await store.write(update_change(conversation, [reply], record=record))

    assert await store.get_record(TENANT, inbound.message_id) == record


# --------------------------------------------------------- list_conversations


async def test_list_filters_by_status_channel_and_user(store: ConversationStore) -> None:
    match, _ = await create(
        store, make_conversation(status=ConversationStatus.ESCALATED, channel=Channel.SLACK)
    )
    await create(store, make_conversation(channel=Channel.SLACK))
    await create(store, make_conversation(status=ConversationStatus.ESCALATED))
    mine, _ = await create(store, make_conversation(user_id="user-2"))

    by_status_and_channel = ConversationQuery(
        status=ConversationStatus.ESCALATED, channel=Channel.SLACK
    )
    assert ids(list(await store.list_conversations(TENANT, by_status_and_channel, limit=10))) == [
        match.conversation_id
    ]
    by_user = ConversationQuery(user_id="user-2")
    assert ids(list(await store.list_conversations(TENANT, by_user, limit=10))) == [
        mine.conversation_id
    ]


async def test_list_filters_by_a_half_open_time_range(store: ConversationStore) -> None:
    created = [
        (await create(store, make_conversation(created_at=T0 + timedelta(hours=h))))[0]
        for h in range(5)
    ]
    query = ConversationQuery(
        start_time=T0 + timedelta(hours=1), end_time=T0 + timedelta(hours=3), descending=False
    )

    found = await store.list_conversations(TENANT, query, limit=10)

    assert ids(list(found)) == ids(created[1:3])


async def test_list_searches_message_text_case_insensitively(store: ConversationStore) -> None:
    street, _ = await create(store, texts=("Hello", "Die STRASSE ist lang"))
    refund, _ = await create(store, texts=("I want a REFUND please",))
    await create(store, texts=("ok, thx",))

    async def search(text: str) -> set[str]:
        query = ConversationQuery(search_query=text)
        return set(ids(list(await store.list_conversations(TENANT, query, limit=10))))

    assert await search("refund") == {refund.conversation_id}
    assert await search("Straße") == {street.conversation_id}  # casefold: ß -> ss
    assert await search("E") == {street.conversation_id, refund.conversation_id}
    assert await search("absent") == set()


async def test_search_takes_percent_and_underscore_literally(store: ConversationStore) -> None:
    literal, _ = await create(store, texts=("save 100%_off today",))
    await create(store, texts=("save 1000 offers",))  # what % and _ as wildcards would match

    for text in ("100%_off", "0%_o", "%", "_"):
        query = ConversationQuery(search_query=text)
        found = await store.list_conversations(TENANT, query, limit=10)
        assert ids(list(found)) == [literal.conversation_id], text


async def test_search_matches_either_unicode_composition(store: ConversationStore) -> None:
    composed, _ = await create(store, texts=("une cr\u00e8me br\u00fbl\u00e9e",))
    decomposed, _ = await create(store, texts=("Pe\u0301rez",))

    async def search(text: str) -> list[str]:
        query = ConversationQuery(search_query=text)
        return ids(list(await store.list_conversations(TENANT, query, limit=10)))

    assert await search("cre\u0300me") == [composed.conversation_id]
    assert await search("CR\u00c8ME BRU\u0302LE\u0301E") == [composed.conversation_id]
    assert await search("p\u00e9rez") == [decomposed.conversation_id]
    assert await search("pe\u0301rez") == [decomposed.conversation_id]


async def test_search_takes_control_characters_and_regex_syntax_literally(
    store: ConversationStore,
) -> None:
    # Stored text holds no NUL (normalize_text), so a query with one matches
    # nothing; MongoDB refuses a NUL inside a regular expression, so the
    # store must not pass one through, whatever the pipeline lets in.
    syntax, _ = await create(store, texts=("a+b (c) [d] ^$ .* \\ {2} | e\tf",))

    for text in ("a+b (c) [d] ^$ .* \\ {2} |", "\\", "[d]", "e\tf"):
        query = ConversationQuery(search_query=text)
        found = await store.list_conversations(TENANT, query, limit=10)
        assert ids(list(found)) == [syntax.conversation_id], text
    for text in ("\x00", "b\x00", "a.b", "b.*c", "^a", "(c("):
        query = ConversationQuery(search_query=text)
        assert not await store.list_conversations(TENANT, query, limit=10), text


async def test_list_orders_by_creation_time_then_id(store: ConversationStore) -> None:
    later, _ = await create(
        store, make_conversation(conversation_id="b", created_at=T0 + timedelta(seconds=1))
    )
    tie_b, _ = await create(store, make_conversation(conversation_id="a2", created_at=T0))
    tie_a, _ = await create(store, make_conversation(conversation_id="a1", created_at=T0))

    newest_first = await store.list_conversations(TENANT, ConversationQuery(), limit=10)
    oldest_first = await store.list_conversations(
        TENANT, ConversationQuery(descending=False), limit=10
    )

    assert ids(list(newest_first)) == ["b", "a2", "a1"]
    assert ids(list(oldest_first)) == ["a1", "a2", "b"]
    assert list(oldest_first) == [tie_a, tie_b, later]


@pytest.mark.parametrize("descending", [True, False])
async def test_keyset_pages_cover_everything_once_in_order(
    store: ConversationStore, descending: bool
) -> None:
    # 13 conversations over 5 distinct times: pages end inside runs of ties.
    created = [
        (await create(store, make_conversation(created_at=T0 + timedelta(seconds=i % 5))))[0]
        for i in range(13)
    ]
    await create(store, make_conversation(tenant_id=OTHER_TENANT))
    expected = sorted(created, key=lambda c: (c.created_at, c.conversation_id), reverse=descending)

    pages = await all_conversations(
        store, TENANT, ConversationQuery(descending=descending), page_size=4
    )

    assert [len(page) for page in pages] == [4, 4, 4, 1]
    assert [c for page in pages for c in page] == expected


async def test_keyset_pages_respect_filters(store: ConversationStore) -> None:
    wanted = [
        (await create(store, make_conversation(created_at=T0 + timedelta(seconds=i))))[0]
        for i in range(5)
    ]
    for i in range(5):
        await create(
            store,
            make_conversation(
                created_at=T0 + timedelta(seconds=i), status=ConversationStatus.COMPLETED
            ),
        )
    query = ConversationQuery(status=ConversationStatus.ACTIVE, descending=False)

    pages = await all_conversations(store, TENANT, query, page_size=2)

    assert [c for page in pages for c in page] == wanted


async def test_creation_times_a_fraction_of_a_second_apart_filter_and_page_exactly(
    store: ConversationStore,
) -> None:
    # 100 µs apart within one second, their ids in the opposite order: a
    # store comparing times to the second would order them by id, and its
    # range filters and page cursors would take one for the other.
    first, _ = await create(store, make_conversation(conversation_id="z-first", created_at=T0))
    second, _ = await create(
        store,
        make_conversation(conversation_id="a-second", created_at=T0 + timedelta(microseconds=100)),
    )

    async def listed(start: datetime | None = None, end: datetime | None = None) -> list[str]:
        query = ConversationQuery(start_time=start, end_time=end, descending=False)
        return ids(list(await store.list_conversations(TENANT, query, limit=10)))

    just_after_first = first.created_at + timedelta(microseconds=1)
    assert await listed() == ["z-first", "a-second"]
    assert await listed(start=second.created_at) == ["a-second"]
    assert await listed(end=second.created_at) == ["z-first"]
    assert await listed(start=just_after_first) == ["a-second"]
    assert await listed(end=just_after_first) == ["z-first"]
    for descending, expected in ((False, [first, second]), (True, [second, first])):
        query = ConversationQuery(descending=descending)
        pages = await all_conversations(store, TENANT, query, page_size=1)
        assert pages == [[conversation] for conversation in expected]


# ------------------------------------------------------------------ messages


async def test_list_messages_in_both_directions_from_a_sequence(
    store: ConversationStore,
) -> None:
    conversation, messages = await create(store, texts=tuple(f"m{i}" for i in range(1, 8)))
    cid = conversation.conversation_id

    async def sequences(
        limit: int, after: int | None = None, descending: bool = False
    ) -> list[int]:
        found = await store.list_messages(
            TENANT, cid, limit=limit, after_sequence=after, descending=descending
        )
        return [m.sequence for m in found]

    assert await sequences(limit=3) == [1, 2, 3]
    assert await sequences(limit=3, after=3) == [4, 5, 6]
    assert await sequences(limit=10, after=5) == [6, 7]
    assert await sequences(limit=10, after=7) == []
    assert await sequences(limit=3, descending=True) == [7, 6, 5]
    assert await sequences(limit=3, descending=True, after=5) == [4, 3, 2]
    assert await sequences(limit=10, descending=True, after=2) == [1]
    assert await store.list_messages(TENANT, cid, limit=10) == messages


async def test_iter_messages_yields_the_range_across_batches(store: ConversationStore) -> None:
    texts = tuple(f"m{i}" for i in range(1, MORE_THAN_A_BATCH * 2 + 1))
    conversation, messages = await create(store, texts=texts)
    cid, last = conversation.conversation_id, len(texts)

    async def sequences(**kwargs: int) -> list[int]:
        return [m.sequence async for m in store.iter_messages(TENANT, cid, **kwargs)]

    assert [m async for m in store.iter_messages(TENANT, cid)] == messages
    assert await sequences(after_sequence=3, through_sequence=17) == list(range(4, 18))
    assert await sequences(after_sequence=SMALL_BATCH) == list(range(SMALL_BATCH + 1, last + 1))
    assert await sequences(through_sequence=SMALL_BATCH * 2) == list(range(1, SMALL_BATCH * 2 + 1))
    assert await sequences(after_sequence=last) == []
    assert await sequences(after_sequence=9, through_sequence=9) == []


# ------------------------------------------------------------- delivery status


async def test_delivery_status_only_moves_forward(store: ConversationStore) -> None:
    conversation, [message] = await create(store, texts=("hi",))
    mid = message.message_id
    sent, read = (make_event(conversation, EventType.DELIVERY_UPDATED, message) for _ in "12")

    assert await store.update_delivery_status(TENANT, mid, DeliveryStatus.SENT, sent)
    assert await status_of(store, mid) is DeliveryStatus.SENT
    assert await store.update_delivery_status(TENANT, mid, DeliveryStatus.READ, read)
    for backwards in (DeliveryStatus.READ, DeliveryStatus.DELIVERED, DeliveryStatus.SENT):
        refused = make_event(conversation, EventType.DELIVERY_UPDATED, message)
        assert not await store.update_delivery_status(TENANT, mid, backwards, refused)

    assert await store.get_message(TENANT, mid) == dataclasses.replace(
        message, delivery_status=DeliveryStatus.READ
    )
    assert await outbox_events(store) == [sent, read]  # only the moves wrote theirs


async def test_failed_is_final(store: ConversationStore) -> None:
    conversation, [message] = await create(store, texts=("hi",))
    mid = message.message_id

    assert await store.update_delivery_status(TENANT, mid, DeliveryStatus.FAILED)
    for later in (DeliveryStatus.SENT, DeliveryStatus.READ, DeliveryStatus.FAILED):
        refused = make_event(conversation, EventType.DELIVERY_UPDATED, message)
        assert not await store.update_delivery_status(TENANT, mid, later, refused)

    assert await status_of(store, mid) is DeliveryStatus.FAILED
    assert await outbox_events(store) == []


async def test_an_unknown_message_does_not_move(store: ConversationStore) -> None:
    conversation = make_conversation()
    event = make_event(conversation, EventType.DELIVERY_UPDATED)

    assert not await store.update_delivery_status(TENANT, "nope", DeliveryStatus.SENT, event)
    assert await outbox_events(store) == []


# ---------------------------------------------------------- platform delivery


async def _replies(
    store: ConversationStore,
    tenant_id: str = TENANT,
    channel: Channel = Channel.WHATSAPP,
    statuses: Sequence[DeliveryStatus] = (DeliveryStatus.PENDING,),
    created_at: datetime = T0,
) -> tuple[Conversation, list[Message]]:
    """A conversation on a platform holding a user's message, then one bot
    reply per status, all created at `created_at`."""
    conversation = make_conversation(tenant_id=tenant_id, channel=channel, created_at=created_at)
    inbound = make_message(
        conversation,
        1,
        "hi",
        delivery_status=DeliveryStatus.SENT,
        channel_metadata=ChannelMetadata(platform_message_id="wamid.inbound"),
    )
    replies = [
        make_message(
            conversation,
            sequence,
            "answer",
            role=MessageRole.BOT,
            delivery_status=status,
            created_at=created_at,
            channel_metadata=ChannelMetadata(
                platform_user_id="15550001", additional_data={"connection_id": "conn-1"}
            ),
        )
        for sequence, status in enumerate(statuses, start=2)
    ]
    await store.write(create_change(conversation, [inbound, *replies]))
    return conversation, replies


async def test_sending_records_the_platform_id_with_the_status(store: ConversationStore) -> None:
    conversation, [reply] = await _replies(store)
    sent = make_event(conversation, EventType.DELIVERY_UPDATED, reply)

    assert await store.update_delivery_status(
        TENANT, reply.message_id, DeliveryStatus.SENT, sent, platform_message_id="wamid.out-1"
    )
    # A move refused (not forward) records nothing, not even the id.
    assert not await store.update_delivery_status(
        TENANT, reply.message_id, DeliveryStatus.SENT, platform_message_id="wamid.other"
    )

    expected = dataclasses.replace(
        reply,
        delivery_status=DeliveryStatus.SENT,
        channel_metadata=dataclasses.replace(
            reply.channel_metadata, platform_message_id="wamid.out-1"
        ),
    )
    assert await store.get_message(TENANT, reply.message_id) == expected
    listed = await store.list_messages(TENANT, conversation.conversation_id, limit=10)
    assert listed[-1] == expected
    assert await outbox_events(store) == [sent]
    # Later moves keep it.
    assert await store.update_delivery_status(TENANT, reply.message_id, DeliveryStatus.READ)
    assert await store.get_message(TENANT, reply.message_id) == dataclasses.replace(
        expected, delivery_status=DeliveryStatus.READ
    )


async def test_sending_merges_what_the_platform_told_into_the_channel_data(
    store: ConversationStore,
) -> None:
    # SMS: the carrier's segment count lands in the message's channel
    # metadata (issue 12), beside what the inbound path put there.
    conversation, [reply] = await _replies(store)
    told: dict[str, str | int | bool] = {"sms_segments": 2, "sms_encoding": "UCS-2", "mms": False}

    assert not await store.update_delivery_status(  # not forward: records nothing
        TENANT, reply.message_id, DeliveryStatus.PENDING, channel_data={"sms_segments": 9}
    )
    assert await store.update_delivery_status(
        TENANT,
        reply.message_id,
        DeliveryStatus.SENT,
        platform_message_id="SM-out-1",
        channel_data=told,
    )

    expected = dataclasses.replace(
        reply,
        delivery_status=DeliveryStatus.SENT,
        channel_metadata=dataclasses.replace(
            reply.channel_metadata,
            platform_message_id="SM-out-1",
            additional_data={"connection_id": "conn-1", **told},
        ),
    )
    assert await store.get_message(TENANT, reply.message_id) == expected
    listed = await store.list_messages(TENANT, conversation.conversation_id, limit=10)
    assert listed[-1] == expected
    # A later move with no channel data keeps it.
    assert await store.update_delivery_status(TENANT, reply.message_id, DeliveryStatus.DELIVERED)
    stored = await store.get_message(TENANT, reply.message_id)
    assert stored is not None
    assert stored.channel_metadata == expected.channel_metadata


async def test_a_reply_is_found_by_its_platform_id_in_its_tenant_and_channel(
    store: ConversationStore,
) -> None:
    _, [reply, other] = await _replies(store, statuses=[DeliveryStatus.PENDING] * 2)
    # The same platform id in another tenant, and on another channel.
    _, [elsewhere] = await _replies(store, tenant_id=OTHER_TENANT)
    _, [messenger] = await _replies(store, channel=Channel.MESSENGER)
    for message in (reply, elsewhere, messenger):
        assert await store.update_delivery_status(
            message.tenant_id,
            message.message_id,
            DeliveryStatus.SENT,
            platform_message_id="wamid.same",
        )
    assert await store.update_delivery_status(
        TENANT, other.message_id, DeliveryStatus.SENT, platform_message_id="wamid.other"
    )

    found = await store.find_by_platform_id(TENANT, Channel.WHATSAPP, "wamid.same")
    assert found is not None
    assert (found.message_id, found.delivery_status) == (reply.message_id, DeliveryStatus.SENT)
    found = await store.find_by_platform_id(OTHER_TENANT, Channel.WHATSAPP, "wamid.same")
    assert found is not None
    assert found.message_id == elsewhere.message_id
    found = await store.find_by_platform_id(TENANT, Channel.MESSENGER, "wamid.same")
    assert found is not None
    assert found.message_id == messenger.message_id
    found = await store.find_by_platform_id(TENANT, Channel.WHATSAPP, "wamid.other")
    assert found is not None
    assert found.message_id == other.message_id
    assert await store.find_by_platform_id(TENANT, Channel.SMS, "wamid.same") is None
    assert await store.find_by_platform_id(TENANT, Channel.WHATSAPP, "wamid.unknown") is None
    assert await store.find_by_platform_id(TENANT, Channel.WHATSAPP, "") is None
    # Inbound messages carry their platform id too, but are never the answer.
    assert await store.find_by_platform_id(TENANT, Channel.WHATSAPP, "wamid.inbound") is None


async def test_pending_deliveries_of_every_tenant_page_in_creation_order(
    store: ConversationStore,
) -> None:
    pending, other = DeliveryStatus.PENDING, DeliveryStatus.SENT
    expected: list[Message] = []
    for n, tenant_id in enumerate([TENANT, OTHER_TENANT, TENANT, OTHER_TENANT]):
        # Two pending replies created in the same microsecond (ids break the
        # tie), beside replies already sent or failed, and a user's message.
        _, replies = await _replies(
            store,
            tenant_id=tenant_id,
            channel=Channel.SMS if n % 2 else Channel.WHATSAPP,
            statuses=[pending, other, pending, DeliveryStatus.FAILED],
            created_at=T0 + timedelta(microseconds=n * 7),
        )
        expected += [reply for reply in replies if reply.delivery_status is pending]
    expected.sort(key=lambda m: (m.created_at, m.message_id))

    pages: list[list[Message]] = []
    after: tuple[datetime, str] | None = None
    for _ in range(10):
        page = list(await store.list_pending_deliveries(limit=3, after=after))
        if not page:
            break
        pages.append(page)
        after = (page[-1].created_at, page[-1].message_id)
    assert [len(page) for page in pages] == [3, 3, 2]
    assert [m for page in pages for m in page] == expected

    # Once sent, a reply is no longer pending.
    first = expected[0]
    assert await store.update_delivery_status(
        first.tenant_id, first.message_id, DeliveryStatus.SENT
    )
    assert await store.list_pending_deliveries(limit=100) == expected[1:]


async def test_only_a_dead_letter_is_requeued_with_its_event(store: ConversationStore) -> None:
    conversation, [failed, sent] = await _replies(
        store, statuses=[DeliveryStatus.FAILED, DeliveryStatus.SENT]
    )
    requeued_event = make_event(conversation, EventType.DELIVERY_UPDATED, failed)

    for tenant_id, message_id in (
        (TENANT, sent.message_id),  # not failed: no backward move
        (TENANT, "nope"),
        (OTHER_TENANT, failed.message_id),  # another tenant's
    ):
        refused = make_event(conversation, EventType.DELIVERY_UPDATED)
        assert await store.requeue_delivery(tenant_id, message_id, refused) is None
    assert await outbox_events(store) == []

    requeued = await store.requeue_delivery(TENANT, failed.message_id, requeued_event)

    expected = dataclasses.replace(failed, delivery_status=DeliveryStatus.PENDING)
    assert requeued == expected
    assert await store.get_message(TENANT, failed.message_id) == expected
    assert await store.list_pending_deliveries(limit=10) == [expected]
    assert await outbox_events(store) == [requeued_event]
    # PENDING now: not requeued twice; it moves forward again as any reply.
    again = make_event(conversation, EventType.DELIVERY_UPDATED, failed)
    assert await store.requeue_delivery(TENANT, failed.message_id, again) is None
    assert await store.update_delivery_status(
        TENANT, failed.message_id, DeliveryStatus.SENT, platform_message_id="wamid.retried"
    )
    assert await status_of(store, failed.message_id) is DeliveryStatus.SENT


# ----------------------------------------------------------- delivery leases

LEASE = 60.0


async def test_a_delivery_lease_is_renewed_by_its_owner_and_refused_to_another(
    store: ConversationStore,
) -> None:
    _, [reply] = await _replies(store)
    claim = partial(store.claim_delivery, TENANT, reply.message_id, lease_seconds=LEASE)

    assert await claim("process-a", now=T0)
    assert not await claim("process-b", now=T0 + timedelta(seconds=1))
    assert await claim("process-a", now=T0 + timedelta(seconds=30))  # renewed: until +90 s
    assert not await claim("process-b", now=T0 + timedelta(seconds=89))
    # Run out (it ends at +90 s): another owner takes it, and holds it.
    assert await claim("process-b", now=T0 + timedelta(seconds=90))
    assert not await claim("process-a", now=T0 + timedelta(seconds=91))
    # A claim is no read: the message is as it was.
    assert await store.get_message(TENANT, reply.message_id) == reply


async def test_only_a_pending_message_of_the_tenant_can_be_claimed(
    store: ConversationStore,
) -> None:
    _, [pending, sent, failed] = await _replies(
        store, statuses=[DeliveryStatus.PENDING, DeliveryStatus.SENT, DeliveryStatus.FAILED]
    )

    for tenant_id, message_id in (
        (TENANT, sent.message_id),
        (TENANT, failed.message_id),
        (TENANT, "nope"),
        (OTHER_TENANT, pending.message_id),
    ):
        assert not await store.claim_delivery(
            tenant_id, message_id, "process-a", now=T0, lease_seconds=LEASE
        )
    assert await store.claim_delivery(
        TENANT, pending.message_id, "process-a", now=T0, lease_seconds=LEASE
    )


async def test_any_move_of_the_delivery_status_ends_the_lease(store: ConversationStore) -> None:
    conversation, [reply] = await _replies(store)
    assert await store.claim_delivery(
        TENANT, reply.message_id, "process-a", now=T0, lease_seconds=LEASE
    )

    assert await store.update_delivery_status(TENANT, reply.message_id, DeliveryStatus.FAILED)
    # No longer PENDING: not even its owner claims it.
    assert not await store.claim_delivery(
        TENANT, reply.message_id, "process-a", now=T0, lease_seconds=LEASE
    )
    # A dead letter requeued (RetryDelivery, on any process) is free at once,
    # although the lease taken before would still run.
    requeued = make_event(conversation, EventType.DELIVERY_UPDATED, reply)
    assert await store.requeue_delivery(TENANT, reply.message_id, requeued) is not None
    claimant = DeliveryClaimant("process-b", T0 + timedelta(seconds=1))
    assert [
        m.message_id for m in await store.list_pending_deliveries(limit=10, claimable_by=claimant)
    ] == [reply.message_id]
    assert await store.claim_delivery(
        TENANT, reply.message_id, "process-b", now=claimant.now, lease_seconds=LEASE
    )
    # Sent (with the platform's id): the lease ends with it.
    assert await store.update_delivery_status(
        TENANT, reply.message_id, DeliveryStatus.SENT, platform_message_id="wamid.out"
    )
    assert await store.list_pending_deliveries(limit=10) == []


async def test_a_lease_is_released_by_its_owner_only(store: ConversationStore) -> None:
    _, [reply] = await _replies(store)
    claim = partial(store.claim_delivery, TENANT, reply.message_id, now=T0, lease_seconds=LEASE)
    assert await claim("process-a")

    await store.release_delivery(TENANT, reply.message_id, "process-b")  # not its lease
    assert not await claim("process-b")
    await store.release_delivery(TENANT, reply.message_id, "process-a")
    assert await claim("process-b")
    await store.release_delivery(TENANT, "nope", "process-b")  # nothing to release


async def test_pending_deliveries_listed_for_a_claimant_are_those_it_may_claim(
    store: ConversationStore,
) -> None:
    _, [mine, theirs, run_out, free] = await _replies(store, statuses=[DeliveryStatus.PENDING] * 4)
    now = T0 + timedelta(minutes=5)
    for message, owner, at in (
        (mine, "process-a", now),
        (theirs, "process-b", now),
        (run_out, "process-b", now - timedelta(seconds=LEASE)),  # ends at `now`
    ):
        assert await store.claim_delivery(
            TENANT, message.message_id, owner, now=at, lease_seconds=LEASE
        )

    async def listed(claimant: DeliveryClaimant | None, page: int) -> list[str]:
        found: list[str] = []
        after: tuple[datetime, str] | None = None
        for _ in range(10):
            batch = await store.list_pending_deliveries(
                limit=page, after=after, claimable_by=claimant
            )
            if not batch:
                break
            found += [m.message_id for m in batch]
            after = (batch[-1].created_at, batch[-1].message_id)
        return found

    # Created in one instant: listed in message id order.
    in_order = sorted([mine, theirs, run_out, free], key=lambda m: m.message_id)
    for page in (1, 10):
        assert await listed(None, page) == [m.message_id for m in in_order]
        assert await listed(DeliveryClaimant("process-a", now), page) == [
            m.message_id for m in in_order if m is not theirs
        ]
        assert await listed(DeliveryClaimant("process-b", now), page) == [
            m.message_id for m in in_order if m is not mine
        ]
        # Later, every lease has run out.
        later = DeliveryClaimant("process-c", now + timedelta(seconds=LEASE))
        assert await listed(later, page) == [m.message_id for m in in_order]


async def test_a_sqlite_file_from_before_delivery_leases_opens_with_them(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    before = MIGRATIONS.index(DELIVERY_LEASES)
    conversation = make_conversation(channel=Channel.WHATSAPP)
    reply = make_message(conversation, 1, "answer", role=MessageRole.BOT)
    with closing(connect(path, busy_timeout=1)) as old:
        for migration in MIGRATIONS[:before]:
            for statement in migration:
                old.execute(statement)
        old.execute(f"PRAGMA user_version = {before}")
        write_change(old, EncodedChange.of(create_change(conversation, [reply])))
        old.commit()

    store = await SqliteStore.open(path)
    try:
        claimant = DeliveryClaimant("process-a", T0)
        assert await store.list_pending_deliveries(limit=10, claimable_by=claimant) == [reply]
        assert await store.claim_delivery(
            TENANT, reply.message_id, "process-a", now=T0, lease_seconds=LEASE
        )
        assert not await store.claim_delivery(
            TENANT, reply.message_id, "process-b", now=T0, lease_seconds=LEASE
        )
    finally:
        await store.close()


# -------------------------------------------------------------------- outbox


async def _fill_outbox(store: ConversationStore, count: int) -> list[DomainEvent]:
    conversation = make_conversation()
    events = [
        make_event(conversation, EventType.MESSAGE_RECEIVED, metadata={"n": n, "nested": {"x": n}})
        for n in range(count)
    ]
    created = create_change(conversation, events=events[:2])
    await store.write(created)
    await store.write(update_change(created.conversation, events=events[2:]))
    return events


async def test_claims_come_oldest_first_and_equal_to_what_was_written(
    store: ConversationStore,
) -> None:
    events = await _fill_outbox(store, 5)

    first = await store.claim_outbox("relay-1", limit=3, lease_seconds=60)
    rest = await store.claim_outbox("relay-1", limit=10, lease_seconds=60)

    assert [entry.event for entry in first] == events[:3]
    positions = [entry.position for entry in first]
    assert positions == sorted(positions)
    # The same owner gets its own leased rows back: it may retry a publish.
    assert [entry.event for entry in rest] == events


async def test_one_owner_at_a_time_holds_the_head(store: ConversationStore) -> None:
    events = await _fill_outbox(store, 4)

    held = await store.claim_outbox("relay-1", limit=2, lease_seconds=60)
    # Not even the rows after it: the other relay would publish them first.
    assert await store.claim_outbox("relay-2", limit=10, lease_seconds=60) == []

    assert [entry.event for entry in held] == events[:2]
    await store.mark_published("relay-1", [entry.position for entry in held])
    after = await store.claim_outbox("relay-2", limit=10, lease_seconds=60)
    assert [entry.event for entry in after] == events[2:]
    assert await store.claim_outbox("relay-1", limit=10, lease_seconds=60) == []


async def test_an_expired_lease_can_be_claimed_by_another_owner(
    store: ConversationStore,
) -> None:
    events = await _fill_outbox(store, 2)
    await store.claim_outbox("relay-1", limit=10, lease_seconds=0.05)

    await asyncio.sleep(0.1)
    taken_over = await store.claim_outbox("relay-2", limit=10, lease_seconds=60)

    assert [entry.event for entry in taken_over] == events


async def test_published_rows_are_never_claimed_again(store: ConversationStore) -> None:
    events = await _fill_outbox(store, 4)
    claimed = await store.claim_outbox("relay-1", limit=3, lease_seconds=0)

    await store.mark_published("relay-1", [entry.position for entry in claimed[:2]])

    remaining = await store.claim_outbox("relay-2", limit=10, lease_seconds=0)
    assert [entry.event for entry in remaining] == events[2:]
    assert await store.claim_outbox("relay-1", limit=10, lease_seconds=0) == remaining


async def test_marking_rows_another_owner_holds_changes_nothing(
    store: ConversationStore,
) -> None:
    events = await _fill_outbox(store, 2)
    held = await store.claim_outbox("relay-1", limit=10, lease_seconds=0)

    await store.mark_published("relay-2", [entry.position for entry in held])

    assert await outbox_events(store) == events


# -------------------------------------------------------------- event log


async def test_the_event_log_reads_everything_after_a_position(store: ConversationStore) -> None:
    assert await store.last_event_position() == 0
    events = await _fill_outbox(store, 5)
    claimed = await store.claim_outbox("relay-1", limit=2, lease_seconds=60)
    await store.mark_published("relay-1", [entry.position for entry in claimed])

    log = await store.read_events(after_position=0, limit=100)

    # Published or not, in order, equal to what was written.
    assert [entry.event for entry in log] == events
    assert [entry.position for entry in log] == sorted(entry.position for entry in log)
    assert await store.last_event_position() == log[-1].position
    after_second = await store.read_events(after_position=log[1].position, limit=2)
    assert [entry.event for entry in after_second] == events[2:4]


async def test_the_event_log_can_be_read_per_tenant(store: ConversationStore) -> None:
    mine = make_conversation(tenant_id=TENANT)
    theirs = make_conversation(tenant_id=OTHER_TENANT)
    await store.write(create_change(mine, events=(make_event(mine), make_event(mine))))
    await store.write(create_change(theirs, events=(make_event(theirs),)))

    my_log = await store.read_events(after_position=0, limit=10, tenant_id=TENANT)
    their_log = await store.read_events(after_position=0, limit=10, tenant_id=OTHER_TENANT)

    assert [entry.event.tenant_id for entry in my_log] == [TENANT, TENANT]
    assert [entry.event.tenant_id for entry in their_log] == [OTHER_TENANT]
    assert len(await store.read_events(after_position=0, limit=10)) == 3


@pytest.fixture(params=["memory", "sqlite", "mongo"])
async def concurrent_store(request: pytest.FixtureRequest) -> AsyncIterator[ConversationStore]:
    """The stores that take concurrent writers here; the forced transactions
    on nx-27017 cannot (test_mongo_store.py tests them one transaction at a
    time, with conflicts)."""
    opened = await STORE_FACTORIES[request.param](request)
    yield opened
    await opened.close()


async def test_a_relay_beside_concurrent_writers_claims_every_event_in_log_order(
    concurrent_store: ConversationStore,
) -> None:
    # Issue 9, item 10: a claim must never pass a position still being
    # written (on SQLite, positions commit in order by themselves).
    store = concurrent_store
    total = 8 * 3
    claimed: list[OutboxEntry] = []

    async def converse() -> None:
        conversation = make_conversation()
        message = make_message(conversation, 1)
        created = create_change(conversation, [message], [make_event(conversation)])
        await store.write(created)
        delivered = make_event(conversation, EventType.DELIVERY_UPDATED, message)
        await store.update_delivery_status(
            TENANT, message.message_id, DeliveryStatus.SENT, delivered
        )
        await store.write(update_change(created.conversation, events=[make_event(conversation)]))

    async def relay() -> None:
        while len(claimed) < total:
            batch = await store.claim_outbox("relay", limit=3, lease_seconds=60)
            claimed.extend(batch)
            await store.mark_published("relay", [entry.position for entry in batch])
            await asyncio.sleep(0 if batch else 0.001)

    async with asyncio.timeout(30):
        await asyncio.gather(relay(), *(converse() for _ in range(8)))

    log = await store.read_events(after_position=0, limit=100)
    assert [entry.position for entry in claimed] == [entry.position for entry in log]
    assert [entry.event for entry in claimed] == [entry.event for entry in log]
    for conversation_id in {entry.event.conversation_id for entry in log}:
        types = [e.event.event_type for e in claimed if e.event.conversation_id == conversation_id]
        assert types[1] is EventType.DELIVERY_UPDATED


# ------------------------------------------------------------ retention

LONG_AGO = datetime(2000, 1, 1, tzinfo=UTC)


def soon() -> datetime:
    """A moment after everything published so far (stores keep milliseconds)."""
    return datetime.now(UTC) + timedelta(seconds=1)


async def _publish_all(store: ConversationStore) -> list[int]:
    claimed = await store.claim_outbox("relay", limit=10_000, lease_seconds=60)
    await store.mark_published("relay", [entry.position for entry in claimed])
    return [entry.position for entry in claimed]


async def test_retention_keeps_the_newest_rows_by_count(store: ConversationStore) -> None:
    events = await _fill_outbox(store, 5)
    positions = await _publish_all(store)

    pruned = await store.prune_outbox(published_before=LONG_AGO, keep_last=2, limit=100)

    assert pruned == 3
    kept = await store.read_events(after_position=positions[2], limit=10)
    assert [entry.event for entry in kept] == events[3:]
    assert await store.last_event_position() == positions[-1]
    # Reading from before what was pruned would miss events: refused.
    for after in (0, positions[1]):
        with pytest.raises(EventsPruned):
            await store.read_events(after_position=after, limit=10)
        with pytest.raises(EventsPruned):
            await store.read_events(after_position=after, limit=10, tenant_id=TENANT)
    assert await store.prune_outbox(published_before=LONG_AGO, keep_last=2, limit=100) == 0


async def test_retention_by_age_may_empty_the_log_and_positions_go_on(
    store: ConversationStore,
) -> None:
    await _fill_outbox(store, 3)
    positions = await _publish_all(store)
    assert await store.prune_outbox(published_before=LONG_AGO, keep_last=1_000, limit=100) == 0

    assert await store.prune_outbox(published_before=soon(), keep_last=1_000, limit=100) == 3

    # The end of the log stays where it was (resume tokens up to it stay
    # valid), and new events take new positions.
    assert await store.last_event_position() == positions[-1]
    assert await store.read_events(after_position=positions[-1], limit=10) == []
    later = await _fill_outbox(store, 2)
    log = await store.read_events(after_position=positions[-1], limit=10)
    assert [entry.event for entry in log] == later
    assert log[0].position > positions[-1]


async def test_retention_prunes_only_published_rows_from_the_head_in_batches(
    store: ConversationStore,
) -> None:
    events = await _fill_outbox(store, 6)
    claimed = await store.claim_outbox("relay", limit=4, lease_seconds=60)
    await store.mark_published("relay", [entry.position for entry in claimed[:3]])

    assert await store.prune_outbox(published_before=soon(), keep_last=0, limit=2) == 2
    # Stops at the first unpublished row, however far the count would reach.
    assert await store.prune_outbox(published_before=soon(), keep_last=0, limit=100) == 1
    assert await store.prune_outbox(published_before=soon(), keep_last=0, limit=100) == 0

    log = await store.read_events(after_position=claimed[2].position, limit=10)
    assert [entry.event for entry in log] == events[3:]
    unpublished = await store.claim_outbox("relay", limit=10, lease_seconds=60)
    assert [entry.event for entry in unpublished] == events[3:]


# ---------------------------------------------------------- relay takeover


class _Recording:
    """An EventPublisher that records, or blocks until released."""

    def __init__(self, *, block: bool = False) -> None:
        self.published: list[OutboxEntry] = []
        self.called = asyncio.Event()
        self._release = asyncio.Event()
        if not block:
            self._release.set()

    async def publish(self, entries: Sequence[OutboxEntry]) -> None:
        self.called.set()
        await self._release.wait()
        self.published.extend(entries)

    async def close(self) -> None:
        return


async def test_a_relay_restarted_under_its_owner_id_takes_its_lease_over_at_once(
    store: ConversationStore,
) -> None:
    events = await _fill_outbox(store, 3)
    settings = RelaySettings(lease_seconds=60)
    # Relay A claims, and crashes while publishing: its lease is neither
    # released nor marked. (A claim straight on the store: cancelling a relay
    # task mid-transaction is no crash on nx-27017, whose aborts can roll back
    # other sessions' writes, A's claim among them.)
    claimed = await store.claim_outbox("host-a:8001", limit=10, lease_seconds=60)
    assert [entry.event for entry in claimed] == events

    # Another process slot waits for the lease to run out...
    elsewhere = _Recording()
    assert await OutboxRelay(store, elsewhere, settings, owner="host-b:8001").publish_once() == 0
    # ...while A's slot, restarted, publishes straight away.
    restarted = _Recording()
    assert await OutboxRelay(store, restarted, settings, owner="host-a:8001").publish_once() == 3
    assert [entry.event for entry in restarted.published] == events
    assert elsewhere.published == []
    assert await store.claim_outbox("host-b:8001", limit=10, lease_seconds=60) == []


# ------------------------------------------------------------- fencing tokens


async def test_a_lower_fencing_token_cannot_write_after_a_higher_one(
    store: ConversationStore,
) -> None:
    conversation = make_conversation()
    created = create_change(conversation)
    await store.write(dataclasses.replace(created, fencing_token=10))
    newer = update_change(created.conversation, status_reason="by the new holder")
    await store.write(dataclasses.replace(newer, fencing_token=12))

    # The stalled holder (token 11) read the newest version, and still may not write.
    stale = update_change(newer.conversation, status_reason="by the stalled holder")
    with pytest.raises(VersionConflict):
        await store.write(dataclasses.replace(stale, fencing_token=11))

    stored = await store.get_conversation(conversation.tenant_id, conversation.conversation_id)
    assert stored == newer.conversation
    # The current holder writes again with its own token; lock-free writes are not fenced.
    await store.write(dataclasses.replace(stale, fencing_token=12))
    latest = update_change(stale.conversation, status_reason="without the lock")
    await store.write(latest)
    assert (
        await store.get_conversation(conversation.tenant_id, conversation.conversation_id)
        == latest.conversation
    )

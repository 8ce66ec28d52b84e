"""What only the MongoDB store has to show: its indexes, durability across
client and server restarts, outages, writes cut short by a crash, the
journalled write order, and how it copes with what nx-27017 (the test
server) cannot do. The shared behaviour is in test_store_contract.py, which
runs on both write paths.

nx-27017's gaps, and where the workaround is exercised:
- its transactions are not isolated from other sessions (they see its
  uncommitted writes, its abort rolls back their writes, and two at once
  fail with "no such savepoint"): it answers `hello` like a standalone, so
  the store uses journalled writes there
  (test_nx_27017_gets_journalled_writes); the transactional path runs in
  the contract suite one operation at a time ("mongo-transactions"), and
  with concurrent callers but one transaction at a time, conflicts
  injected (test_concurrent_writers_and_a_relay_...[transactions]);
- a filter with an $or loses its other conditions: every $or goes inside
  an explicit $and (test_an_or_keeps_its_other_conditions_inside_an_and;
  the contract's keyset-with-filters and claim tests fail without it);
- `distinct` ignores a $regex in its filter: the search groups with an
  aggregation (the contract's search tests);
- dotted projections come back as flat keys: the store projects whole
  subdocuments (the journalled delivery-status and recovery tests);
- a compound index holding `_id` breaks inserts: no index holds `_id`
  (test_open_creates_the_indexes);
- index names and compound directions are its own, partial filters are
  dropped: index checks compare keys and uniqueness only;
- TTL indexes are created, but nothing ever expires; a changed TTL replaces
  the index silently and collMod is a no-op: the TTL test checks the
  index's setting, not expiry;
- documents `$push`-ed into an array are stored as JSON strings (and
  `$pull` by a condition then removes them all): the store keeps such sets
  as maps of subdocuments, `$set` and `$unset` by key (the journalled
  tests; the event log's in-flight positions);
- `$ne` does not match missing fields, positional `$` updates corrupt
  arrays, and aggregation-pipeline updates are refused: the store uses none;
- strings that look like ISO dates compare as datetimes cut to the whole
  second (`"…01.100000Z"` equals `"…01.300000Z"`, and `$gte`/`$lt` alike;
  sorting is right): the time conversations are filtered and paged on is
  kept as integer microseconds, `created_us`, and no query compares a date
  string (the contract's
  test_creation_times_a_fraction_of_a_second_apart_filter_and_page_exactly;
  test_opening_brings_a_database_of_an_earlier_version_up_to_date);
- a date `$set` by an update comes back as a string: retention compares
  the integer `published_us` (the contract's retention tests);
- write and read concerns are accepted and mean nothing (no replicas):
  what the store asks for is checked on the commands it sends
  (test_writes_wait_for_a_journalled_majority_and_the_relay_reads_only_majority_data);
- a filter on anything but `_id` scans the whole collection (its
  equalities also match arrays, which keeps SQLite off the indexes): the
  hot paths find messages and records by a natural `_id`, their unique key
  (test_the_hot_paths_find_messages_and_records_by_id). Listing a
  conversation's messages still scans there (MongoDB uses the index).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient, monitoring
from pymongo.errors import OperationFailure

from adapters.mongo import MongoStore, transactions
from adapters.mongo.documents import conversation_document, message_document, record_document
from adapters.mongo.filters import all_of
from adapters.mongo.transactions import supports_transactions
from chat_service.domain.enums import DeliveryStatus
from chat_service.domain.events import EventType
from chat_service.ports import (
    ConversationChange,
    ConversationQuery,
    DuplicateMessage,
    StoreUnavailable,
    VersionConflict,
)
from tests.builders import (
    T0,
    TENANT,
    append_retrying,
    create_change,
    make_conversation,
    make_event,
    make_message,
    make_record,
    update_change,
)
from tests.support.mongo import MongoServer, database_name

# Short timeouts: a stopped server is noticed within a second, and one that
# is back is found again within it (the driver checks at most twice a second).
TIMEOUT_MS = 1000
# Short leases, so that a crashed journalled writer is overtaken quickly.
LEASE = timedelta(seconds=0.3)

RawClient = AsyncMongoClient[dict[str, Any]]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[MongoServer]:
    """A server of the test's own, for tests that stop, kill or restart it."""
    own = MongoServer(tmp_path / "mongo").start()
    yield own
    own.kill()


@pytest.fixture
async def raw(mongo_uri: str) -> AsyncIterator[RawClient]:
    """A plain client on the test's database, to look behind the store."""
    client: RawClient = AsyncMongoClient(mongo_uri)
    yield client
    await client.close()


async def open_store(uri: str, **options: Any) -> MongoStore:
    defaults: dict[str, Any] = {"timeout_ms": TIMEOUT_MS, "write_lease": LEASE}
    return await MongoStore.open(uri, **(defaults | options))


def own_uri(server: MongoServer, request: pytest.FixtureRequest) -> str:
    return server.uri_for(database_name(request.node.name))


def full_change() -> ConversationChange:
    """A new conversation with a message, two events and a record."""
    conversation = make_conversation()
    message = make_message(conversation, 1, "hello")
    events = [make_event(conversation, message=message) for _ in range(2)]
    return create_change(conversation, [message], events, make_record(message))


async def assert_written(store: MongoStore, change: ConversationChange) -> None:
    """All of the change is there, readable, its events in the outbox."""
    conversation = change.conversation
    assert await store.get_conversation(TENANT, conversation.conversation_id) == conversation
    listed = await store.list_messages(TENANT, conversation.conversation_id, limit=10)
    assert list(listed) == list(change.messages)
    assert change.record is not None
    assert await store.get_record(TENANT, change.record.message_id) == change.record
    claimed = await store.claim_outbox("inspector", limit=100, lease_seconds=0)
    mine = [e.event for e in claimed if e.event.conversation_id == conversation.conversation_id]
    assert mine == list(change.events)


async def assert_not_written(store: MongoStore, change: ConversationChange) -> None:
    """Nothing of the (new-conversation) change is visible."""
    assert await store.get_conversation(TENANT, change.conversation.conversation_id) is None
    for message in change.messages:
        assert await store.get_message(TENANT, message.message_id) is None
        assert await store.get_record(TENANT, message.message_id) is None
    listed = await store.list_messages(TENANT, change.conversation.conversation_id, limit=10)
    assert list(listed) == []
    assert await store.claim_outbox("inspector", limit=100, lease_seconds=0) == []


class KillOnCommand(monitoring.CommandListener):
    """Kills the server (SIGKILL, a crash) as the first command matching
    `when` is sent: that command and everything after it fail."""

    def __init__(self, server: MongoServer, when: Callable[[str, Mapping[str, Any]], bool]) -> None:
        self._server = server
        self._when = when
        self.fired = False

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if not self.fired and self._when(event.command_name, event.command):
            self.fired = True
            self._server.kill()

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def inserting_events(name: str, command: Mapping[str, Any]) -> bool:
    return name == "insert" and command.get("insert") == "outbox"


def committing_journalled_change(name: str, command: Mapping[str, Any]) -> bool:
    """The journalled write's commit: the conversation updated, `_pending` set."""
    return (
        name == "update"
        and command.get("update") == "conversations"
        and any(
            "_pending" in update.get("u", {}).get("$set", {})
            for update in command.get("updates", ())
        )
    )


# --------------------------------------------------------------- opening


async def test_open_creates_the_indexes(mongo_uri: str, raw: RawClient) -> None:
    await (await open_store(mongo_uri)).close()
    await (await open_store(mongo_uri)).close()  # again: idempotent

    database = raw.get_default_database()

    async def indexes(collection: str) -> dict[tuple[str, ...], Mapping[str, Any]]:
        # Keys and options only: nx-27017 has index names of its own and
        # does not keep a compound index's direction.
        found = await (await database[collection].list_indexes()).to_list()
        return {tuple(index["key"]): index for index in found}

    conversations = await indexes("conversations")
    assert {
        ("tenant_id", "created_us", "conversation_id"),
        ("tenant_id", "user_id"),
        ("tenant_id", "status", "channel"),
    } <= set(conversations)
    messages = await indexes("messages")
    assert messages[("tenant_id", "message_id")].get("unique") is True
    assert messages[("conversation_id", "sequence")].get("unique") is True
    records = await indexes("idempotency_records")
    assert records[("tenant_id", "message_id")].get("unique") is True
    assert records[("stored_at",)]["expireAfterSeconds"] == 7 * 24 * 3600
    outbox = await indexes("outbox")
    assert {("unpublished", "position"), ("event.tenant_id", "position")} <= set(outbox)
    # No index holds _id beside other keys (nx-27017 cannot insert then).
    for found in (conversations, messages, records, outbox):
        assert all("_id" not in keys for keys in found if len(keys) > 1)


async def test_a_changed_ttl_applies_on_the_next_open(mongo_uri: str, raw: RawClient) -> None:
    await (await open_store(mongo_uri)).close()
    await (await open_store(mongo_uri, record_ttl=timedelta(days=1))).close()

    found = await (await raw.get_default_database()["idempotency_records"].list_indexes()).to_list()
    ttl = {tuple(index["key"]): index.get("expireAfterSeconds") for index in found}
    assert ttl[("stored_at",)] == 24 * 3600


async def test_the_database_comes_from_the_argument_or_the_uri_path(
    mongo_server: MongoServer, request: pytest.FixtureRequest
) -> None:
    named = database_name(request.node.name)
    stores = [
        await open_store(mongo_server.uri_for(named)),
        await open_store(mongo_server.uri_for("ignored"), database=named),
        await open_store(mongo_server.uri),
    ]
    try:
        assert [store.database_name for store in stores] == [named, named, "chat_service"]
    finally:
        for store in stores:
            await store.close()


async def test_nx_27017_gets_journalled_writes(mongo_uri: str) -> None:
    # nx-27017 gap: its transactions are not isolated from other sessions.
    # It answers `hello` like a standalone mongod (no setName), which has no
    # transactions at all, so the store journals its writes there.
    store = await open_store(mongo_uri)
    forced = await open_store(mongo_uri, transactions=True)
    try:
        assert not store.uses_transactions
        assert forced.uses_transactions
    finally:
        await store.close()
        await forced.close()


def test_replica_sets_and_mongos_have_transactions() -> None:
    assert supports_transactions({"isWritablePrimary": True, "setName": "rs0"})
    assert supports_transactions({"isWritablePrimary": True, "msg": "isdbgrid"})
    assert not supports_transactions({"isWritablePrimary": True})


async def test_an_or_keeps_its_other_conditions_inside_an_and(raw: RawClient) -> None:
    # nx-27017 gap: beside an $or, other conditions are dropped. The store
    # writes every $or inside an explicit $and (filters.all_of).
    things = raw.get_default_database()["things"]
    await things.insert_many([{"n": n, "kind": "odd" if n % 2 else "even"} for n in range(6)])

    found = things.find(all_of({"kind": "odd"}, {"$or": [{"n": {"$lt": 2}}, {"n": 5}]}))

    assert sorted(thing["n"] for thing in await found.to_list()) == [1, 5]


async def test_opening_brings_a_database_of_an_earlier_version_up_to_date(
    mongo_uri: str, raw: RawClient
) -> None:
    # As the earlier version wrote them: conversations without `created_us`
    # (and its index on the `created_at` string), messages and records
    # under ObjectIds, and a committed change still journalled without the
    # list of the messages it reserved.
    database = raw.get_default_database()
    await database["conversations"].create_index(
        [("tenant_id", 1), ("created_at", 1), ("conversation_id", 1)]
    )
    first = make_conversation(conversation_id="z-first", created_at=T0, last_sequence=1)
    second = make_conversation(
        conversation_id="a-second", created_at=T0 + timedelta(microseconds=100), last_sequence=1
    )
    message, journalled = make_message(first, 1), make_message(second, 1)
    record = make_record(message)
    earlier = [conversation_document(c, fencing_token=None) for c in (first, second)]
    for document in earlier:
        del document["created_us"]
    earlier[1]["_pending"] = {"token": "w-earlier", "events": []}
    await database["conversations"].insert_many(earlier)
    await database["messages"].insert_many(
        [
            {key: value for key, value in message_document(m).items() if key != "_id"}
            for m in (message, journalled)
        ]
    )
    await database["messages"].update_one(
        {"message_id": journalled.message_id}, {"$set": {"_write": "w-earlier"}}
    )
    await database["idempotency_records"].insert_one(
        # Stored now: the records' TTL index (7 days) would take a record
        # stored at T0 once T0 is a week behind the clock.
        record_document(record, stored_at=datetime.now(UTC), version=1)
    )

    store = await open_store(mongo_uri)
    try:
        stored = await database["conversations"].find_one({"_id": first.conversation_id})
        assert stored is not None
        assert stored["created_us"] == int(T0.timestamp()) * 1_000_000 + T0.microsecond
        indexes = await (await database["conversations"].list_indexes()).to_list()
        assert ("tenant_id", "created_at", "conversation_id") not in {
            tuple(index["key"]) for index in indexes
        }
        query = ConversationQuery(start_time=second.created_at)
        assert [
            c.conversation_id for c in await store.list_conversations(TENANT, query, limit=10)
        ] == ["a-second"]

        # Found by their unique key, and written on as before.
        assert await store.get_message(TENANT, message.message_id) == message
        assert await store.get_record(TENANT, message.message_id) == record
        assert await store.update_delivery_status(TENANT, message.message_id, DeliveryStatus.READ)
        reply = make_message(first, 2)
        await store.write(update_change(first, [reply], record=make_record(reply)))
        assert await store.get_message(TENANT, reply.message_id) == reply
        assert await store.get_record(TENANT, reply.message_id) is not None
        # The earlier version's journalled change is rolled forward.
        await store.claim_outbox("relay", limit=10, lease_seconds=0)
        finished = await database["messages"].find_one({"message_id": journalled.message_id})
        assert finished is not None
        assert "_write" not in finished
    finally:
        await store.close()


class CommandLog(monitoring.CommandListener):
    """The filters of the commands sent to some collections."""

    def __init__(self, collections: set[str]) -> None:
        self._collections = collections
        self.filters: list[tuple[str, Mapping[str, Any]]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        command = event.command
        if command.get(event.command_name) not in self._collections:
            return
        if event.command_name == "find":
            self.filters.append(("find", command["filter"]))
        elif event.command_name == "findAndModify":
            self.filters.append(("findAndModify", command["query"]))
        elif event.command_name in ("update", "delete"):
            statements = command["updates" if event.command_name == "update" else "deletes"]
            self.filters.extend((event.command_name, s["q"]) for s in statements)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


async def test_the_hot_paths_find_messages_and_records_by_id(mongo_uri: str) -> None:
    # nx-27017 gap: a filter on anything but `_id` scans the collection, so
    # a journalled write that found its messages by conversation got slower
    # with the conversation (and on MongoDB too: `_write` has no index).
    commands = CommandLog({"messages", "idempotency_records"})
    store = await open_store(mongo_uri, client_options={"event_listeners": [commands]})
    try:
        change = full_change()
        [message] = change.messages
        await store.write(change)
        reply = make_message(change.conversation, 2)
        await store.write(update_change(change.conversation, [reply], record=make_record(reply)))
        assert await store.get_message(TENANT, reply.message_id) == reply
        assert await store.get_record(TENANT, reply.message_id) is not None
        event = make_event(change.conversation, EventType.DELIVERY_UPDATED, message)
        assert await store.update_delivery_status(
            TENANT, message.message_id, DeliveryStatus.SENT, event
        )
        assert await store.get_message(TENANT, "unknown") is None
    finally:
        await store.close()

    assert len(commands.filters) > 8
    assert [f for f in commands.filters if "_id" not in f[1]] == []


# ------------------------------------------------------ durability, outages


class Concerns(monitoring.CommandListener):
    """The write and read concerns of the commands sent."""

    _WRITES = frozenset({"insert", "update", "delete", "findAndModify", "commitTransaction"})

    def __init__(self) -> None:
        self.writes: list[tuple[str, Any]] = []
        self.reads: list[tuple[str, Any, Any]] = []  # (command, collection, readConcern)

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        command = event.command
        # In a transaction (`autocommit: false`), only the commit carries one.
        in_transaction = "autocommit" in command and event.command_name != "commitTransaction"
        if event.command_name in self._WRITES and not in_transaction:
            self.writes.append((event.command_name, command.get("writeConcern")))
        elif event.command_name == "find" and "claim" not in command.get("filter", {}):
            # (A claim reads back which rows it got, its own write, locally.)
            collection = command.get(event.command_name)
            self.reads.append((event.command_name, collection, command.get("readConcern")))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@pytest.mark.parametrize("transactions", [False, True], ids=["journalled", "transactions"])
async def test_writes_wait_for_a_journalled_majority_and_the_relay_reads_only_majority_data(
    mongo_uri: str, transactions: bool
) -> None:
    # On a replica set, a write acknowledged by the primary alone can be
    # rolled back by a failover, and a relay reading local data could
    # publish an event that is then lost. nx-27017 takes the concerns and
    # has no replicas to honour them: this checks what the store asks for.
    concerns = Concerns()
    store = await open_store(
        mongo_uri, transactions=transactions, client_options={"event_listeners": [concerns]}
    )
    try:
        change = full_change()
        await store.write(change)
        [message] = change.messages
        event = make_event(change.conversation, EventType.DELIVERY_UPDATED, message)
        await store.update_delivery_status(TENANT, message.message_id, DeliveryStatus.SENT, event)
        concerns.reads.clear()
        claimed = await store.claim_outbox("relay", limit=10, lease_seconds=60)
        await store.mark_published("relay", [entry.position for entry in claimed])
        await store.read_events(after_position=0, limit=10)
        await store.read_events(after_position=0, limit=10, tenant_id=TENANT)
        await store.last_event_position()
    finally:
        await store.close()

    majority = {"w": "majority", "j": True}
    assert len(claimed) == 3
    assert concerns.writes
    assert [w for w in concerns.writes if w[1] != majority] == []
    if transactions:
        assert any(name == "commitTransaction" for name, _ in concerns.writes)
    outbox_reads = [r for r in concerns.reads if r[1] in ("outbox", "counters")]
    assert outbox_reads
    assert [r for r in outbox_reads if r[2] != {"level": "majority"}] == []


async def test_data_survives_closing_the_client_and_restarting_the_server(
    server: MongoServer, request: pytest.FixtureRequest
) -> None:
    uri = own_uri(server, request)
    store = await open_store(uri)
    change = full_change()
    [message] = change.messages
    await store.write(change)
    assert await store.update_delivery_status(TENANT, message.message_id, DeliveryStatus.READ)
    [first, _] = await store.claim_outbox("relay", limit=10, lease_seconds=0)
    await store.mark_published("relay", [first.position])
    await store.close()

    server.restart()
    reopened = await open_store(uri)
    try:
        cid = change.conversation.conversation_id
        assert await reopened.get_conversation(TENANT, cid) == change.conversation
        read = dataclasses.replace(message, delivery_status=DeliveryStatus.READ)
        assert await reopened.list_messages(TENANT, cid, limit=10) == [read]
        assert change.record is not None
        assert await reopened.get_record(TENANT, message.message_id) == change.record
        remaining = await reopened.claim_outbox("relay", limit=10, lease_seconds=0)
        assert [entry.event for entry in remaining] == [change.events[1]]
        log = await reopened.read_events(after_position=0, limit=10)
        assert [entry.event for entry in log] == list(change.events)
    finally:
        await reopened.close()


@pytest.mark.parametrize("transactions", [False, True], ids=["journalled", "transactions"])
async def test_an_outage_fails_fast_and_the_same_store_recovers(
    server: MongoServer, request: pytest.FixtureRequest, transactions: bool
) -> None:
    store = await open_store(own_uri(server, request), transactions=transactions)
    try:
        before = full_change()
        await store.write(before)
        cid = before.conversation.conversation_id

        server.stop()
        calls: list[Callable[[], Any]] = [
            lambda: store.get_conversation(TENANT, cid),
            lambda: store.write(full_change()),
            lambda: store.claim_outbox("relay", limit=10, lease_seconds=1),
        ]
        for call in calls:
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                await call()
            # Server selection gives up after TIMEOUT_MS; aborting a cut
            # transaction may wait that long once more.
            assert time.monotonic() - started < 3 * TIMEOUT_MS / 1000

        server.start()
        after = full_change()
        await store.write(after)  # the same instance, not reopened
        await assert_written(store, after)
        assert await store.get_conversation(TENANT, cid) == before.conversation
    finally:
        await store.close()


# ------------------------------------------------- writes cut by a crash


async def test_a_transaction_cut_by_a_crash_leaves_nothing(
    server: MongoServer, request: pytest.FixtureRequest
) -> None:
    # The crash comes as the events are inserted: the conversation and its
    # messages are already written, in the transaction.
    killer = KillOnCommand(server, inserting_events)
    store = await open_store(
        own_uri(server, request), transactions=True, client_options={"event_listeners": [killer]}
    )
    try:
        change = full_change()
        with pytest.raises(StoreUnavailable):
            await store.write(change)
        assert killer.fired

        server.start()
        await assert_not_written(store, change)
        await store.write(change)  # the caller's retry
        await assert_written(store, change)
    finally:
        await store.close()


async def test_a_journalled_write_cut_before_its_commit_leaves_nothing(
    server: MongoServer, request: pytest.FixtureRequest
) -> None:
    # Lease taken, messages reserved, positions taken: then the crash.
    killer = KillOnCommand(server, committing_journalled_change)
    store = await open_store(own_uri(server, request), client_options={"event_listeners": [killer]})
    try:
        change = full_change()
        with pytest.raises(StoreUnavailable):
            await store.write(change)
        assert killer.fired

        server.start()
        await assert_not_written(store, change)
        await asyncio.sleep(LEASE.total_seconds())
        await store.write(change)  # the retry overtakes the dead write's leftovers
        await assert_written(store, change)
    finally:
        await store.close()


async def test_a_journalled_write_cut_after_its_commit_is_finished_by_readers(
    server: MongoServer, request: pytest.FixtureRequest
) -> None:
    # The commit is in; the crash comes as the events go to the outbox.
    killer = KillOnCommand(server, inserting_events)
    store = await open_store(own_uri(server, request), client_options={"event_listeners": [killer]})
    try:
        change = full_change()
        await store.write(change)  # committed: the rest is journalled
        assert killer.fired

        server.start()
        # get_record and claim_outbox roll the change forward.
        await assert_written(store, change)
        log = await store.read_events(after_position=0, limit=10)
        assert [entry.event for entry in log] == list(change.events)
    finally:
        await store.close()


async def test_positions_of_a_dead_writer_hold_back_the_log_until_its_lease_ends(
    server: MongoServer, request: pytest.FixtureRequest
) -> None:
    lease = timedelta(seconds=3)  # long enough to look at the log within it
    killer = KillOnCommand(server, committing_journalled_change)
    store = await open_store(
        own_uri(server, request), write_lease=lease, client_options={"event_listeners": [killer]}
    )
    try:
        dead = full_change()
        lease_end = time.monotonic() + lease.total_seconds()
        with pytest.raises(StoreUnavailable):
            await store.write(dead)
        server.start()
        later = full_change()
        await store.write(later)

        # The dead write's positions come before `later`'s: while its lease
        # lasts, a reader of the log may not pass them.
        held_back = await store.read_events(after_position=0, limit=10)
        last = await store.last_event_position()
        assert time.monotonic() < lease_end  # (else the test proves nothing)
        assert (held_back, last) == ([], 0)
        await asyncio.sleep(lease_end - time.monotonic())
        log = await store.read_events(after_position=0, limit=10)
        assert [entry.event for entry in log] == list(later.events)
        assert log[0].position > 2  # the dead write's 1 and 2 are void
        assert await store.last_event_position() == log[-1].position

        # The dead write's message id is free again, in another conversation.
        [taken] = dead.messages
        conversation = make_conversation()
        reused = make_message(conversation, 1, message_id=taken.message_id)
        await store.write(create_change(conversation, [reused]))
        assert await store.get_message(TENANT, taken.message_id) == reused
        assert await store.get_conversation(TENANT, dead.conversation.conversation_id) is None
    finally:
        await store.close()


# ----------------------------------------------------- journalled writes


async def test_a_journalled_writer_that_outlives_its_lease_cannot_commit(
    mongo_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow, fast = await open_store(mongo_uri), await open_store(mongo_uri)
    try:
        created = create_change(make_conversation())
        await fast.write(created)
        original = created.conversation
        # The slow writer stalls between reserving its message and committing
        # (a step inside the journal, reached into for that).
        journal = slow._journal
        assert journal is not None
        commit = journal._commit

        async def stalled_commit(*args: Any) -> Any:
            await asyncio.sleep(LEASE.total_seconds() * 2)
            return await commit(*args)

        monkeypatch.setattr(journal, "_commit", stalled_commit)
        slow_message = make_message(original, 1, "slow")
        fast_message = make_message(original, 1, "fast")
        slow_write = asyncio.create_task(slow.write(update_change(original, [slow_message])))
        await asyncio.sleep(LEASE.total_seconds() * 1.2)

        # Its lease over, another writer takes the conversation, and the
        # same sequence, from it.
        await fast.write(update_change(original, [fast_message]))
        with pytest.raises(VersionConflict):
            await slow_write

        cid = original.conversation_id
        assert await fast.list_messages(TENANT, cid, limit=10) == [fast_message]
        assert await fast.get_message(TENANT, slow_message.message_id) is None
    finally:
        await slow.close()
        await fast.close()


class HeldCommit:
    """Holds a store's journalled writes between their reservations and their
    commit (a step inside the journal, reached into for that) until released."""

    def __init__(self, store: MongoStore, monkeypatch: pytest.MonkeyPatch) -> None:
        journal = store._journal
        assert journal is not None
        commit = journal._commit
        self.reached = asyncio.Event()
        self.go_on = asyncio.Event()

        async def held_commit(*args: Any) -> Any:
            self.reached.set()
            await self.go_on.wait()
            return await commit(*args)

        monkeypatch.setattr(journal, "_commit", held_commit)


async def test_a_live_writers_reservation_is_a_duplicate_elsewhere(
    mongo_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await open_store(mongo_uri, write_lease=timedelta(seconds=30))
    held = HeldCommit(store, monkeypatch)  # between its reservation and its commit
    try:
        first = make_conversation()
        message = make_message(first, 1)
        first_write = asyncio.create_task(store.write(create_change(first, [message])))
        await held.reached.wait()

        # While the first write holds the id (reserved, not committed), it
        # is taken for another conversation, and invisible to readers.
        other = make_conversation()
        same_id = make_message(other, 1, message_id=message.message_id)
        with pytest.raises(DuplicateMessage):
            await store.write(create_change(other, [same_id]))
        assert await store.get_message(TENANT, message.message_id) is None
        assert not await store.update_delivery_status(
            TENANT, message.message_id, DeliveryStatus.READ
        )

        held.go_on.set()
        await first_write
        assert await store.get_message(TENANT, message.message_id) == message
        assert await store.get_conversation(TENANT, other.conversation_id) is None
    finally:
        held.go_on.set()  # (close() waits for the held write)
        await store.close()


async def test_a_delivery_update_slower_than_its_lease_is_voided_and_retried(
    mongo_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await open_store(mongo_uri)
    try:
        change = full_change()
        await store.write(change)
        [message] = change.messages
        await store.claim_outbox("relay", limit=10, lease_seconds=60)  # out of the way
        # The first round stalls past its lease after taking its position
        # (inside the journal, reached into for that); meanwhile a claim
        # settles the position as void, so that round's update cannot apply.
        journal = store._journal
        assert journal is not None
        positions = journal._positions
        take, rounds = positions.take, 0

        async def slow_take(*args: Any, **kwargs: Any) -> range:
            nonlocal rounds
            rounds += 1
            taken = await take(*args, **kwargs)
            if rounds == 1:
                await asyncio.sleep(LEASE.total_seconds() * 1.5)
                await store.claim_outbox("relay", limit=10, lease_seconds=60)
            return taken

        monkeypatch.setattr(positions, "take", slow_take)
        event = make_event(change.conversation, EventType.DELIVERY_UPDATED, message)

        async with asyncio.timeout(5):
            moved = await store.update_delivery_status(
                TENANT, message.message_id, DeliveryStatus.SENT, event
            )

        assert moved
        assert rounds == 2
        assert await store.get_message(TENANT, message.message_id) == dataclasses.replace(
            message, delivery_status=DeliveryStatus.SENT
        )
        # The change's events are at 1 and 2; the voided round had 3.
        log = await store.read_events(after_position=2, limit=10)
        assert [(entry.position, entry.event) for entry in log] == [(4, event)]
    finally:
        await store.close()


async def test_the_log_shows_no_position_before_the_lower_ones_are_written(
    mongo_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await open_store(mongo_uri, write_lease=timedelta(seconds=30))
    held = HeldCommit(store, monkeypatch)  # after taking its positions, before its commit
    try:
        first, second = full_change(), full_change()
        first_write = asyncio.create_task(store.write(first))
        await held.reached.wait()
        monkeypatch.undo()
        await store.write(second)

        assert await store.read_events(after_position=0, limit=10) == []
        assert await store.last_event_position() == 0
        held.go_on.set()
        await first_write
        log = await store.read_events(after_position=0, limit=10)
        assert [entry.event for entry in log] == [*first.events, *second.events]
        assert [entry.position for entry in log] == [1, 2, 3, 4]
    finally:
        held.go_on.set()  # (close() waits for the held write)
        await store.close()


async def test_the_relay_claims_no_position_before_the_lower_ones_are_written(
    mongo_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Issue 9, item 10: the claim took the oldest unpublished rows with no
    # bound, so the relay published the second change's events (3, 4)
    # while the first change still held 1 and 2, and those went out after.
    store = await open_store(mongo_uri, write_lease=timedelta(seconds=30))
    held = HeldCommit(store, monkeypatch)  # after taking its positions, before its commit
    try:
        first, second = full_change(), full_change()
        first_write = asyncio.create_task(store.write(first))
        await held.reached.wait()
        monkeypatch.undo()
        await store.write(second)

        assert await store.claim_outbox("relay", limit=10, lease_seconds=60) == []
        held.go_on.set()
        await first_write
        claimed = await store.claim_outbox("relay", limit=10, lease_seconds=60)
        assert [entry.event for entry in claimed] == [*first.events, *second.events]
        assert [entry.position for entry in claimed] == [1, 2, 3, 4]
    finally:
        held.go_on.set()  # (close() waits for the held write)
        await store.close()


async def test_a_delivery_event_in_flight_holds_back_its_conversations_later_events(
    mongo_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Delivery-status updates take positions without the conversation lock:
    # one stalled after taking its position must not be overtaken by a later
    # event of the same conversation at the relay.
    store = await open_store(mongo_uri, write_lease=timedelta(seconds=30))
    try:
        change = full_change()
        await store.write(change)
        published = await store.claim_outbox("relay", limit=10, lease_seconds=60)
        await store.mark_published("relay", [entry.position for entry in published])
        [message] = change.messages
        journal = store._journal
        assert journal is not None
        positions = journal._positions
        take, reached, go_on = positions.take, asyncio.Event(), asyncio.Event()

        async def held_take(*args: Any, **kwargs: Any) -> range:
            taken = await take(*args, **kwargs)
            reached.set()
            await go_on.wait()
            return taken

        monkeypatch.setattr(positions, "take", held_take)
        delivered = make_event(change.conversation, EventType.DELIVERY_UPDATED, message)
        update = asyncio.create_task(
            store.update_delivery_status(TENANT, message.message_id, DeliveryStatus.SENT, delivered)
        )
        await reached.wait()
        monkeypatch.undo()
        reply = make_message(change.conversation, 2)
        later = update_change(
            change.conversation, [reply], [make_event(change.conversation, message=reply)]
        )
        await store.write(later)

        assert await store.claim_outbox("relay", limit=10, lease_seconds=60) == []
        go_on.set()
        assert await update
        claimed = await store.claim_outbox("relay", limit=10, lease_seconds=60)
        assert [entry.event for entry in claimed] == [delivered, *later.events]
    finally:
        go_on.set()
        await store.close()


class NoLock(asyncio.Lock):
    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None


@dataclasses.dataclass
class SerializedTransactions:
    """nx-27017 cannot run a transaction beside anything else that writes (two
    at once fail, and an abort rolls back other sessions' writes; see the
    module docstring). So the transactional path's concurrency is tested
    with its transactions, and the relay's claims and marks (`serial`), run
    one at a time by the test, and everything else concurrent: the callers
    racing on versions, the retry loop, the readers of the log. A write
    conflict is injected into every third transaction after its writes, as
    MongoDB raises when two touch one document (the outbox counter), so that
    each is aborted and retried; `injected` counts them."""

    serial: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)
    injected: int = 0


def serialized_transactions_with_conflicts(
    monkeypatch: pytest.MonkeyPatch,
) -> SerializedTransactions:
    serialized = SerializedTransactions()
    serial = serialized.serial
    run = transactions.run_in_transaction
    started = itertools.count(1)

    async def one_at_a_time(client: Any, body: Any, *, time_limit: float) -> None:
        attempts = itertools.count()
        number = next(started)

        async def conflicting(session: Any) -> None:
            await body(session)
            if next(attempts) == 0 and number % 3 == 0:
                serialized.injected += 1
                raise OperationFailure(
                    "WriteConflict (injected)",
                    112,
                    {"errorLabels": ["TransientTransactionError"], "code": 112},
                )

        async with serial:
            await run(client, conflicting, time_limit=time_limit)

    monkeypatch.setattr(transactions, "run_in_transaction", one_at_a_time)
    return serialized


@pytest.mark.parametrize("transactions", [False, True], ids=["journalled", "transactions"])
async def test_concurrent_writers_and_a_relay_leave_no_gap_lose_no_event_and_keep_order(
    mongo_uri: str, monkeypatch: pytest.MonkeyPatch, transactions: bool
) -> None:
    serialized = (
        serialized_transactions_with_conflicts(monkeypatch)
        if transactions
        else SerializedTransactions(serial=NoLock())  # journalled: all at once
    )
    # Ordering, not outages, is under test: a request timeout the test
    # server (pure Python) meets on a loaded machine, not the one-second
    # timeout that makes the outage tests quick.
    store = await open_store(
        mongo_uri,
        write_lease=timedelta(seconds=10),
        transactions=transactions,
        timeout_ms=10_000,
    )
    try:
        shared = create_change(make_conversation())
        await store.write(shared)
        shared_id = shared.conversation.conversation_id

        async def converse_alone() -> str:
            conversation = make_conversation()
            message = make_message(conversation, 1)
            change = create_change(conversation, [message])
            await store.write(change)
            reply = make_message(change.conversation, 2)
            await store.write(
                update_change(change.conversation, [reply], [make_event(conversation)])
            )
            # Delivery updates take positions without the conversation's lock.
            delivered = make_event(conversation, EventType.DELIVERY_UPDATED, message)
            await store.update_delivery_status(
                TENANT, message.message_id, DeliveryStatus.SENT, delivered
            )
            return conversation.conversation_id

        events = 24  # 8 lone conversations' 2, the shared one's 8
        tailed: list[int] = []
        claimed: list[int] = []

        async def tail() -> None:
            """Follows the log's end as WatchConversations does: if a position
            became visible before a lower one, the tail would skip that one
            (and never get to all the events)."""
            after = 0
            while len(tailed) < events:
                batch = await store.read_events(after_position=after, limit=100)
                tailed.extend(entry.position for entry in batch)
                after = batch[-1].position if batch else after
                await asyncio.sleep(0 if batch else 0.002)

        async def relay() -> None:
            """Claims and publishes as the outbox relay does: a position claimed
            before a lower one would be published before it."""
            while len(claimed) < events:
                async with serialized.serial:
                    batch = await store.claim_outbox("relay", limit=5, lease_seconds=60)
                    claimed.extend(entry.position for entry in batch)
                    await store.mark_published("relay", [entry.position for entry in batch])
                await asyncio.sleep(0 if batch else 0.002)

        texts = [f"writer {n}" for n in range(8)]
        async with asyncio.timeout(30):
            alone, *_ = await asyncio.gather(
                asyncio.gather(*(converse_alone() for _ in range(8))),
                asyncio.gather(*(append_retrying(store, shared_id, t) for t in texts)),
                tail(),
                relay(),
            )

        for conversation_id in alone:
            messages = await store.list_messages(TENANT, conversation_id, limit=10)
            assert [m.sequence for m in messages] == [1, 2]
            assert messages[0].delivery_status is DeliveryStatus.SENT
        messages = [m async for m in store.iter_messages(TENANT, shared_id)]
        assert [m.sequence for m in messages] == list(range(1, 9))
        assert sorted(m.content.text for m in messages) == sorted(texts)
        log = await store.read_events(after_position=0, limit=100)
        positions = [entry.position for entry in log]
        assert len(log) == events
        assert positions == sorted(set(positions))
        assert tailed == positions
        assert claimed == positions
        for conversation_id in alone:
            mine = [e.event.event_type for e in log if e.event.conversation_id == conversation_id]
            assert mine == [EventType.MESSAGE_RECEIVED, EventType.DELIVERY_UPDATED]
        if transactions:
            assert serialized.injected >= 8  # a third of the transactions were retried
    finally:
        await store.close()


# ------------------------------------- a newer lock takes over a write lease


def fenced(change: ConversationChange, fencing_token: int | None) -> ConversationChange:
    return dataclasses.replace(change, fencing_token=fencing_token)


async def test_a_write_under_a_newer_lock_takes_over_a_cut_writes_lease_at_once(
    server: MongoServer, request: pytest.FixtureRequest
) -> None:
    # MongoDB dies as a write commits: its lease (long here) stays on the
    # placeholder of the conversation it was creating.
    lease = timedelta(seconds=30)
    killer = KillOnCommand(server, committing_journalled_change)
    store = await open_store(
        own_uri(server, request), write_lease=lease, client_options={"event_listeners": [killer]}
    )
    try:
        cut = fenced(full_change(), 5)
        with pytest.raises(StoreUnavailable):
            await store.write(cut)
        assert killer.fired
        server.start()

        # The caller's retry holds the conversation's next lock grant.
        retry = fenced(cut, 6)
        async with asyncio.timeout(lease.total_seconds() / 3):
            await store.write(retry)
            # The cut write's positions were released with its lease: the
            # log is not held back until that lease would have ended.
            log = await store.read_events(after_position=0, limit=10)
        assert [entry.event for entry in log] == list(retry.events)
        await assert_written(store, retry)
    finally:
        await store.close()


async def test_a_writer_whose_lock_passed_on_cannot_commit(
    mongo_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    lease = timedelta(seconds=30)
    stale, current = await open_store(mongo_uri, write_lease=lease), await open_store(mongo_uri)
    held = HeldCommit(stale, monkeypatch)
    try:
        created = fenced(create_change(make_conversation()), 4)
        await current.write(created)
        original = created.conversation
        # The stale writer (lock grant 5) reserved its message and took its
        # positions, then stalled, or lost MongoDB, before its commit.
        stalled = make_message(original, 1, "stalled")
        stale_change = fenced(
            update_change(
                original, [stalled], [make_event(original, message=stalled)], make_record(stalled)
            ),
            5,
        )
        stale_write = asyncio.create_task(stale.write(stale_change))
        await held.reached.wait()

        # The next holder of the lock (grant 6) writes at once, the same
        # sequence included, without waiting for the stale writer's lease.
        newer = make_message(original, 1, "newer")
        newer_change = fenced(
            update_change(original, [newer], [make_event(original, message=newer)]), 6
        )
        async with asyncio.timeout(lease.total_seconds() / 3):
            await current.write(newer_change)

        held.go_on.set()
        with pytest.raises(VersionConflict):
            await stale_write

        cid = original.conversation_id
        assert await current.get_conversation(TENANT, cid) == newer_change.conversation
        assert await current.list_messages(TENANT, cid, limit=10) == [newer]
        assert await current.get_message(TENANT, stalled.message_id) is None
        assert await current.get_record(TENANT, stalled.message_id) is None
        log = await current.read_events(after_position=0, limit=10)
        assert [entry.event for entry in log] == list(newer_change.events)
        claimed = await current.claim_outbox("relay", limit=10, lease_seconds=0)
        assert [entry.event for entry in claimed] == list(newer_change.events)
    finally:
        held.go_on.set()  # (close() waits for the held write)
        await stale.close()
        await current.close()


@pytest.mark.parametrize(
    ("holder", "others"),
    [(5, [None, 4, 5]), (None, [6])],
    ids=["lease-under-a-lock", "lease-without-a-lock"],
)
async def test_a_live_lease_is_taken_over_only_by_a_newer_lock(
    mongo_uri: str, monkeypatch: pytest.MonkeyPatch, holder: int | None, others: list[int | None]
) -> None:
    # Without a token, or with one no newer than the lease's, a write waits
    # for the lease to run out, as it did before fencing tokens; so does
    # every write when the lease's writer held no lock.
    lease = timedelta(seconds=30)
    writer, other = await open_store(mongo_uri, write_lease=lease), await open_store(mongo_uri)
    held = HeldCommit(writer, monkeypatch)
    try:
        created = create_change(make_conversation())
        await other.write(created)
        original = created.conversation
        message = make_message(original, 1)
        change = fenced(update_change(original, [message]), holder)
        write = asyncio.create_task(writer.write(change))
        await held.reached.wait()

        for token in others:
            with pytest.raises(VersionConflict):
                await other.write(
                    fenced(update_change(original, [make_message(original, 1)]), token)
                )

        held.go_on.set()
        await write
        assert await other.list_messages(TENANT, original.conversation_id, limit=10) == [message]
    finally:
        held.go_on.set()
        await writer.close()
        await other.close()

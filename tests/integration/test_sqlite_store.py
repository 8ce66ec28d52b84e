"""What only the SQLite store has to show: durability, its schema, its
threads. The shared behaviour is in test_store_contract.py."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from adapters.sqlite import SqliteStore
from adapters.sqlite.connections import GroupCommitWriter, connect
from adapters.sqlite.schema import MIGRATIONS, SCHEMA_VERSION
from chat_service.domain.enums import ConversationStatus, DeliveryStatus
from chat_service.domain.event_codec import event_to_dict
from chat_service.domain.events import EventType
from chat_service.ports import StoreUnavailable
from tests.builders import (
    TENANT,
    append_retrying,
    create_change,
    make_conversation,
    make_event,
    make_message,
    make_record,
    update_change,
)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "nested" / "dirs" / "chat.db"


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[SqliteStore]:
    opened = await SqliteStore.open(db_path)
    yield opened
    await opened.close()


def user_version(path: Path) -> int:
    assert path.is_file()  # else connect() would create it
    with closing(sqlite3.connect(path)) as connection:
        return int(connection.execute("PRAGMA user_version").fetchone()[0])


# ------------------------------------------------------- durability, schema


async def test_data_survives_close_and_reopen(db_path: Path) -> None:
    store = await SqliteStore.open(db_path, synchronous="FULL")
    conversation = make_conversation()
    message = make_message(conversation, 1)
    published, pending = (make_event(conversation, message=message) for _ in "12")
    change = create_change(conversation, [message], [published, pending], make_record(message))
    await store.write(change)
    await store.update_delivery_status(TENANT, message.message_id, DeliveryStatus.SENT)
    [first, _] = await store.claim_outbox("relay", limit=10, lease_seconds=0)
    await store.mark_published("relay", [first.position])
    await store.close()

    reopened = await SqliteStore.open(db_path)
    try:
        cid = conversation.conversation_id
        assert await reopened.get_conversation(TENANT, cid) == change.conversation
        sent = dataclasses.replace(message, delivery_status=DeliveryStatus.SENT)
        assert await reopened.list_messages(TENANT, cid, limit=10) == [sent]
        assert await reopened.get_record(TENANT, message.message_id) == change.record
        remaining = await reopened.claim_outbox("relay", limit=10, lease_seconds=0)
        assert [entry.event for entry in remaining] == [pending]
    finally:
        await reopened.close()


async def test_events_this_process_wrote_are_claimed_without_decoding_them(
    store: SqliteStore, db_path: Path
) -> None:
    # The relay publishes what it claims: the events this store wrote are
    # handed back as they were written, not decoded again from their text.
    conversation = make_conversation()
    message = make_message(conversation, 1)
    events = [
        make_event(conversation, message=message),
        make_event(
            conversation,
            EventType.STATUS_CHANGED,
            metadata={"from": "active", "to": "completed", "reason": "done", "score": 0.5},
            conversation_status=ConversationStatus.COMPLETED,
        ),
    ]
    await store.write(create_change(conversation, [message], events))

    claimed = await store.claim_outbox("relay", limit=10, lease_seconds=30)
    assert [entry.event for entry in claimed] == events
    assert all(entry.event is event for entry, event in zip(claimed, events, strict=True))
    read = await store.read_events(after_position=0, limit=10)
    assert all(entry.event is event for entry, event in zip(read, events, strict=True))

    # Another process has not written them: it decodes the same events.
    other = await SqliteStore.open(db_path)
    try:
        decoded = await other.read_events(after_position=0, limit=10)
    finally:
        await other.close()
    assert [entry.event for entry in decoded] == events
    assert decoded[0].event is not events[0]


async def test_opening_creates_directories_and_schema_idempotently(db_path: Path) -> None:
    for _ in range(2):
        store = await SqliteStore.open(db_path)
        await store.close()

    assert user_version(db_path) == SCHEMA_VERSION


async def test_a_database_from_a_newer_release_is_refused(db_path: Path) -> None:
    await (await SqliteStore.open(db_path)).close()
    with closing(sqlite3.connect(db_path)) as connection:
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        connection.commit()

    with pytest.raises(StoreUnavailable, match="newer"):
        await SqliteStore.open(db_path)


async def test_an_unusable_file_makes_the_store_unavailable(tmp_path: Path) -> None:
    not_a_database = tmp_path / "junk.db"
    not_a_database.write_bytes(b"this is not an SQLite database, just junk " * 100)

    with pytest.raises(StoreUnavailable):
        await SqliteStore.open(not_a_database)
    with pytest.raises(StoreUnavailable):
        await SqliteStore.open(tmp_path)  # a directory


async def test_a_closed_store_is_unavailable(store: SqliteStore) -> None:
    await store.close()

    with pytest.raises(StoreUnavailable):
        await store.get_conversation(TENANT, "any")
    with pytest.raises(StoreUnavailable):
        await store.write(create_change(make_conversation()))
    await store.close()  # closing twice is fine


async def test_a_lock_held_past_the_busy_timeout_makes_the_store_unavailable(
    db_path: Path,
) -> None:
    store = await SqliteStore.open(db_path, busy_timeout=0.05)
    change = create_change(make_conversation())
    try:
        with closing(sqlite3.connect(db_path, isolation_level=None)) as other_process:
            other_process.execute("BEGIN IMMEDIATE")
            with pytest.raises(StoreUnavailable):
                await store.write(change)
            other_process.execute("ROLLBACK")

        assert await store.get_conversation(TENANT, change.conversation.conversation_id) is None
        await store.write(change)  # usable again once the lock is gone
    finally:
        await store.close()


async def test_opening_waits_for_another_process_creating_the_same_database(
    tmp_path: Path,
) -> None:
    """Two workers starting on one fresh DATA_DIR: one may still hold the new
    file's write lock (rollback journal, before WAL) when the other switches
    it to WAL, and SQLite answers that switch "locked" at once, without its
    busy handler. Opening waits it out (the CI failure of a 2-worker start)."""
    db_path = tmp_path / "chat.db"
    other_process = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    other_process.execute("BEGIN IMMEDIATE")
    other_process.execute("CREATE TABLE started_first (a)")
    release = asyncio.get_running_loop().call_later(0.3, other_process.execute, "COMMIT")
    try:
        store = await SqliteStore.open(db_path, busy_timeout=5.0)
    finally:
        release.cancel()
        other_process.close()
    try:
        await store.write(create_change(make_conversation()))
    finally:
        await store.close()


async def test_opening_gives_up_when_the_lock_outlasts_the_busy_timeout(
    tmp_path: Path,
) -> None:
    db_path = tmp_path / "chat.db"
    with closing(sqlite3.connect(db_path, isolation_level=None)) as other_process:
        other_process.execute("BEGIN IMMEDIATE")
        other_process.execute("CREATE TABLE started_first (a)")
        with pytest.raises(StoreUnavailable, match="locked"):
            await SqliteStore.open(db_path, busy_timeout=0.2)
        other_process.execute("ROLLBACK")


# ------------------------------------------------------------- concurrency


async def test_concurrent_writers_leave_a_consistent_database(
    store: SqliteStore, db_path: Path
) -> None:
    shared = create_change(make_conversation())
    await store.write(shared)
    shared_id = shared.conversation.conversation_id

    async def converse_alone() -> str:
        """Creates its own conversation and appends to it twice."""
        conversation = make_conversation()
        change = create_change(conversation, [make_message(conversation, 1)])
        await store.write(change)
        for sequence in (2, 3):
            message = make_message(change.conversation, sequence)
            change = update_change(
                change.conversation, [message], [make_event(conversation, message=message)]
            )
            await store.write(change)
        return conversation.conversation_id

    texts = [f"writer {n}" for n in range(25)]
    alone_ids = await asyncio.gather(
        *(converse_alone() for _ in range(50)),
        *(append_retrying(store, shared_id, t) for t in texts),
    )

    for conversation_id in alone_ids[:50]:
        assert conversation_id is not None
        conversation = await store.get_conversation(TENANT, conversation_id)
        assert conversation is not None
        assert (conversation.version, conversation.last_sequence) == (3, 3)
        messages = await store.list_messages(TENANT, conversation_id, limit=10)
        assert [m.sequence for m in messages] == [1, 2, 3]
    conversation = await store.get_conversation(TENANT, shared_id)
    assert conversation is not None
    assert (conversation.version, conversation.last_sequence) == (26, 25)
    messages = [m async for m in store.iter_messages(TENANT, shared_id)]
    assert [m.sequence for m in messages] == list(range(1, 26))
    assert sorted(m.content.text for m in messages) == sorted(texts)
    events = await store.claim_outbox("relay", limit=1000, lease_seconds=60)
    assert len(events) == 50 * 2 + 25
    with closing(sqlite3.connect(db_path)) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


async def test_the_event_loop_runs_while_a_write_waits(store: SqliteStore, db_path: Path) -> None:
    ticks = 0

    async def heartbeat() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    change = create_change(make_conversation(), [], [make_event(make_conversation())])
    heart = asyncio.create_task(heartbeat())
    # Another connection holds the write lock, so the store's write must
    # wait for it (SQLite's busy timeout) on its writer thread.
    with closing(sqlite3.connect(db_path, isolation_level=None)) as blocker:
        blocker.execute("BEGIN IMMEDIATE")
        write = asyncio.create_task(store.write(change))
        await asyncio.sleep(0.2)
        ticks_while_blocked = ticks
        write_was_waiting = not write.done()
        # Reads go on beside the pending write (WAL, separate read threads).
        read_while_blocked = await store.get_conversation(TENANT, "unknown")
        blocker.execute("COMMIT")
    await write
    heart.cancel()

    assert write_was_waiting
    assert ticks_while_blocked >= 10
    assert read_while_blocked is None
    cid = change.conversation.conversation_id
    assert await store.get_conversation(TENANT, cid) == change.conversation
    [entry] = await store.claim_outbox("relay", limit=10, lease_seconds=0)
    assert entry.event == change.events[0]


# ------------------------------------------------------------ group commit


class _CountingWriter(GroupCommitWriter):
    def __init__(self, connection: sqlite3.Connection) -> None:
        self.batches: list[int] = []
        super().__init__(connection, name="test-writer")

    def _commit(self, batch: list[Any]) -> list[Any]:
        self.batches.append(len(batch))
        return super()._commit(batch)


async def test_group_commit_isolates_a_failing_unit(tmp_path: Path) -> None:
    connection = connect(tmp_path / "g.db", busy_timeout=1)
    connection.execute("CREATE TABLE t (n INTEGER PRIMARY KEY)")
    writer = _CountingWriter(connection)

    def insert(n: int) -> Callable[[sqlite3.Connection], int]:
        def work(c: sqlite3.Connection) -> int:
            c.execute("INSERT INTO t (n) VALUES (?)", (n,))
            if n == 7:
                raise ValueError("unit 7 fails after writing")
            return n

        return work

    results = await asyncio.gather(
        *(writer.run(insert(n)) for n in range(20)), return_exceptions=True
    )
    writer.close()

    assert isinstance(results[7], ValueError)
    assert [r for i, r in enumerate(results) if i != 7] == [n for n in range(20) if n != 7]
    check = connect(tmp_path / "g.db", busy_timeout=1)
    rows = [row[0] for row in check.execute("SELECT n FROM t ORDER BY n")]
    check.close()
    assert rows == [n for n in range(20) if n != 7]
    assert sum(writer.batches) == 20
    assert len(writer.batches) < 20  # units queued together were committed together


async def test_group_commit_runs_units_without_savepoints_until_one_fails(tmp_path: Path) -> None:
    # Savepoints are two statements per unit: a batch pays for them only
    # once a unit of it failed (it then runs again, each unit in its own).
    connection = connect(tmp_path / "s.db", busy_timeout=1)
    connection.execute("CREATE TABLE t (n INTEGER PRIMARY KEY)")
    statements: list[str] = []
    connection.set_trace_callback(statements.append)
    writer = GroupCommitWriter(connection, name="test-writer")

    def insert(n: int) -> Callable[[sqlite3.Connection], int]:
        def work(c: sqlite3.Connection) -> int:
            c.execute("INSERT INTO t (n) VALUES (?)", (n,))
            return n

        return work

    assert await asyncio.gather(*(writer.run(insert(n)) for n in range(5))) == list(range(5))
    clean = [s for s in statements if "SAVEPOINT" in s or "RELEASE" in s]
    statements.clear()
    failed = await asyncio.gather(
        writer.run(insert(5)), writer.run(insert(5)), return_exceptions=True
    )
    writer.close()

    assert clean == []
    assert failed[0] == 5
    assert isinstance(failed[1], sqlite3.IntegrityError)
    assert any("SAVEPOINT" in s for s in statements)  # the failing batch ran again, apart


async def test_a_version_1_database_is_migrated_with_its_events(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    conversation = make_conversation()
    event = make_event(conversation)
    with closing(connect(path, busy_timeout=1)) as old:
        for statement in MIGRATIONS[0]:
            old.execute(statement)
        old.execute("PRAGMA user_version = 1")
        old.execute("INSERT INTO outbox (event) VALUES (?)", (json.dumps(event_to_dict(event)),))

    store = await SqliteStore.open(path)
    try:
        log = await store.read_events(after_position=0, limit=10, tenant_id=event.tenant_id)
    finally:
        await store.close()

    assert [entry.event for entry in log] == [event]

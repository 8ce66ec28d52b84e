"""ConversationStore on one SQLite file: the embedded default store.

One writer connection on its own thread serializes every write; each write
is one `BEGIN IMMEDIATE` transaction run whole on that thread. Reads run on
a small pool of read-only connections beside it (WAL mode lets readers and
the writer proceed together). Each operation is a single thread hop.

A call cancelled while its unit of work runs does not stop that work: a
cancelled write may still commit, as a write whose reply was lost would.

The units of work are beside it: queries.py (reads), writes.py (a change,
a delivery status), outbox.py (claims, the event log, retention); rows.py
encodes, schema.py migrates, connections.py runs them on their threads.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TypeVar

from adapters.sqlite import outbox
from adapters.sqlite.connections import (
    SYNCHRONOUS_MODES,
    ConnectionPool,
    GroupCommitWriter,
    connect,
    means_busy,
    means_unavailable,
)
from adapters.sqlite.queries import (
    fetch_all,
    select_by_platform_id,
    select_conversations,
    select_messages,
    select_pending_deliveries,
)
from adapters.sqlite.rows import Params, conversation_from_row, message_from_row, record_from_row
from adapters.sqlite.schema import migrate
from adapters.sqlite.writes import (
    EncodedChange,
    advance_delivery_status,
    claim_delivery,
    release_delivery,
    requeue_delivery,
    write_change,
)
from adapters.storage.changes import check_change, positive_limit
from adapters.storage.times import seconds_to_micros, to_micros
from chat_service.domain.enums import Channel, DeliveryStatus
from chat_service.domain.events import DomainEvent, OutboxEntry
from chat_service.domain.model import Conversation, IdempotencyRecord, Message
from chat_service.ports import (
    ConversationChange,
    ConversationCursor,
    ConversationQuery,
    DeliveryClaimant,
    StoreUnavailable,
)

_T = TypeVar("_T")


class SqliteStore:
    """The ConversationStore port on SQLite. Build it with `open()`."""

    def __init__(
        self, writer: GroupCommitWriter, readers: ConnectionPool, *, iter_batch_size: int
    ) -> None:
        self._writer = writer
        self._readers = readers
        self._iter_batch_size = iter_batch_size
        self._closed = False
        # What this process wrote, for its claims and reads of the log (outbox.py).
        self._written = outbox.WrittenEvents()

    @classmethod
    async def open(
        cls,
        path: Path,
        *,
        synchronous: str = "NORMAL",
        readers: int = 4,
        iter_batch_size: int = 500,
        busy_timeout: float = 5.0,
    ) -> SqliteStore:
        """Open (creating the file, its directories and the schema if need be).

        `synchronous` is SQLite's durability setting: NORMAL (WAL's usual
        choice: a power cut may lose the last commits, never corrupt) or FULL
        (every commit synced). `busy_timeout` bounds the wait for a lock held
        by another process. Raises StoreUnavailable when the file cannot be
        used.
        """
        mode = synchronous.upper()
        if mode not in SYNCHRONOUS_MODES:
            raise ValueError(f"synchronous must be one of {sorted(SYNCHRONOUS_MODES)}")
        if readers < 1 or iter_batch_size < 1:
            raise ValueError("readers and iter_batch_size must be positive")
        connections = await asyncio.to_thread(_open_connections, path, mode, readers, busy_timeout)
        return cls(
            GroupCommitWriter(connections[0], name="sqlite-writer"),
            ConnectionPool(connections[1:], name="sqlite-reader"),
            iter_batch_size=iter_batch_size,
        )

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._writer.hand_over()  # what was written before closing still commits
        await asyncio.to_thread(self._close_pools)

    def _close_pools(self) -> None:
        self._writer.close()
        self._readers.close()

    # ------------------------------------------------------------- reads

    async def get_conversation(self, tenant_id: str, conversation_id: str) -> Conversation | None:
        found = await self._read_all(
            "SELECT * FROM conversations WHERE conversation_id = ? AND tenant_id = ?",
            (conversation_id, tenant_id),
            conversation_from_row,
        )
        return found[0] if found else None

    async def list_conversations(
        self,
        tenant_id: str,
        query: ConversationQuery,
        *,
        limit: int,
        after: ConversationCursor | None = None,
    ) -> Sequence[Conversation]:
        sql, params = select_conversations(tenant_id, query, positive_limit(limit), after)
        return await self._read_all(sql, params, conversation_from_row)

    async def list_messages(
        self,
        tenant_id: str,
        conversation_id: str,
        *,
        limit: int,
        after_sequence: int | None = None,
        descending: bool = False,
    ) -> Sequence[Message]:
        sql, params = select_messages(
            tenant_id,
            conversation_id,
            limit=positive_limit(limit),
            after_sequence=after_sequence,
            descending=descending,
        )
        return await self._read_all(sql, params, message_from_row)

    async def iter_messages(
        self,
        tenant_id: str,
        conversation_id: str,
        *,
        after_sequence: int = 0,
        through_sequence: int | None = None,
    ) -> AsyncIterator[Message]:
        # Keyset batches: each is its own short read, so nothing is held
        # open between batches however slowly the caller consumes them.
        while True:
            sql, params = select_messages(
                tenant_id,
                conversation_id,
                limit=self._iter_batch_size,
                after_sequence=after_sequence,
                through_sequence=through_sequence,
            )
            batch = await self._read_all(sql, params, message_from_row)
            for message in batch:
                yield message
            if len(batch) < self._iter_batch_size:
                return
            after_sequence = batch[-1].sequence

    async def get_message(self, tenant_id: str, message_id: str) -> Message | None:
        found = await self._read_all(
            "SELECT * FROM messages WHERE tenant_id = ? AND message_id = ?",
            (tenant_id, message_id),
            message_from_row,
        )
        return found[0] if found else None

    async def get_record(self, tenant_id: str, message_id: str) -> IdempotencyRecord | None:
        found = await self._read_all(
            "SELECT * FROM idempotency_records WHERE tenant_id = ? AND message_id = ?",
            (tenant_id, message_id),
            record_from_row,
        )
        return found[0] if found else None

    # ------------------------------------------------------------ writes

    async def write(self, change: ConversationChange) -> None:
        check_change(change)
        # Encoded here, so the writer thread holds the write lock for SQL only.
        encoded = EncodedChange.of(change)
        for event, (_, text) in zip(change.events, encoded.events, strict=True):
            self._written.remember(text, event)
        await self._write(lambda c: write_change(c, encoded))

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
        return await self._write(
            lambda c: advance_delivery_status(
                c, tenant_id, message_id, status, event, platform_message_id, channel_data
            )
        )

    async def find_by_platform_id(
        self, tenant_id: str, channel: Channel, platform_message_id: str
    ) -> Message | None:
        if not platform_message_id:
            return None  # never recorded: an empty id names no message
        sql, params = select_by_platform_id(tenant_id, channel.value, platform_message_id)
        found = await self._read_all(sql, params, message_from_row)
        return found[0] if found else None

    async def list_pending_deliveries(
        self,
        *,
        limit: int,
        after: tuple[datetime, str] | None = None,
        claimable_by: DeliveryClaimant | None = None,
    ) -> Sequence[Message]:
        sql, params = select_pending_deliveries(
            limit=positive_limit(limit), after=after, claimable_by=claimable_by
        )
        return await self._read_all(sql, params, message_from_row)

    async def requeue_delivery(
        self, tenant_id: str, message_id: str, event: DomainEvent
    ) -> Message | None:
        return await self._write(lambda c: requeue_delivery(c, tenant_id, message_id, event))

    async def claim_delivery(
        self, tenant_id: str, message_id: str, owner: str, *, now: datetime, lease_seconds: float
    ) -> bool:
        at = to_micros(now)
        params = {
            "tenant_id": tenant_id,
            "message_id": message_id,
            "owner": owner,
            "now": at,
            "until": at + seconds_to_micros(lease_seconds),
        }
        return await self._write(lambda c: claim_delivery(c, params))

    async def release_delivery(self, tenant_id: str, message_id: str, owner: str) -> None:
        await self._write(lambda c: release_delivery(c, tenant_id, message_id, owner))

    async def claim_outbox(
        self, owner: str, *, limit: int, lease_seconds: float
    ) -> Sequence[OutboxEntry]:
        lease = seconds_to_micros(lease_seconds)
        limit = positive_limit(limit)
        return await self._write(lambda c: outbox.claim(c, owner, limit, lease, self._written))

    async def mark_published(self, owner: str, positions: Sequence[int]) -> None:
        if positions:
            await self._write(lambda c: outbox.mark_published(c, owner, positions))

    async def read_events(
        self, *, after_position: int, limit: int, tenant_id: str | None = None
    ) -> Sequence[OutboxEntry]:
        # One writer commits positions in order, so a reader never sees a
        # later position before an earlier one (outbox.py).
        limit = positive_limit(limit)
        self._check_open()
        return await self._readers.run(
            lambda c: outbox.read_events(c, after_position, limit, tenant_id, self._written)
        )

    async def last_event_position(self) -> int:
        self._check_open()
        return await self._readers.run(outbox.last_position)

    async def prune_outbox(self, *, published_before: datetime, keep_last: int, limit: int) -> int:
        before = to_micros(published_before)
        limit = positive_limit(limit)
        return await self._write(lambda c: outbox.prune(c, before, max(keep_last, 0), limit))

    # ----------------------------------------------------------- plumbing

    async def _read_all(
        self, sql: str, params: Params | tuple[object, ...], decode: Callable[[sqlite3.Row], _T]
    ) -> list[_T]:
        self._check_open()
        return await self._readers.run(lambda c: fetch_all(c, sql, params, decode))

    async def _write(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        self._check_open()
        return await self._writer.run(work)

    def _check_open(self) -> None:
        if self._closed:
            raise StoreUnavailable("the SQLite store is closed")


# ------------------------------------------------------------------ opening


def _open_connections(
    path: Path, synchronous: str, readers: int, busy_timeout: float
) -> list[sqlite3.Connection]:
    """The writer (first) and the readers, with the schema up to date."""
    opened: list[sqlite3.Connection] = []
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = connect(path, busy_timeout=busy_timeout)
        opened.append(writer)
        journal = _switch_to_wal(writer, deadline=time.monotonic() + busy_timeout)
        if str(journal).lower() != "wal":
            raise StoreUnavailable(f"{path}: cannot use WAL (journal mode is {journal})")
        # PRAGMA takes no parameters; the value was checked against a fixed set.
        writer.execute(f"PRAGMA synchronous = {synchronous}")
        migrate(writer)
        opened.extend(
            connect(path, busy_timeout=busy_timeout, read_only=True) for _ in range(readers)
        )
    except BaseException as error:
        for connection in opened:
            connection.close()
        if isinstance(error, OSError) or (
            isinstance(error, sqlite3.Error) and means_unavailable(error)
        ):
            raise StoreUnavailable(f"cannot open SQLite store {path}: {error}") from error
        raise
    return opened


def _switch_to_wal(writer: sqlite3.Connection, *, deadline: float) -> object:
    """The journal mode after asking for WAL.

    While another process holds a fresh file's write lock (a second worker
    creating the same database), SQLite answers this switch SQLITE_BUSY at
    once, without calling the busy handler (it would deadlock otherwise), so
    the busy timeout is honoured here by hand.
    """
    while True:
        try:
            return writer.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        except sqlite3.OperationalError as error:
            if not means_busy(error) or time.monotonic() >= deadline:
                raise
        time.sleep(0.01)

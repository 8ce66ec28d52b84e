"""ConversationStore on one SQLite file: the embedded default store.

One writer connection on its own thread serializes every write; each write
is one `BEGIN IMMEDIATE` transaction run whole on that thread. Reads run on
a small pool of read-only connections beside it (WAL mode lets readers and
the writer proceed together). Each operation is a single thread hop.

A call cancelled while its unit of work runs does not stop that work: a
cancelled write may still commit, as a write whose reply was lost would.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TypeVar

from adapters.sqlite import outbox
from adapters.sqlite.connections import (
    SYNCHRONOUS_MODES,
    ConnectionPool,
    GroupCommitWriter,
    connect,
    means_unavailable,
)
from adapters.sqlite.rows import (
    Params,
    conversation_from_row,
    conversation_params,
    dump_json,
    message_from_row,
    message_params,
    record_from_row,
    record_params,
    to_micros,
)
from adapters.sqlite.schema import migrate
from chat_service.domain.enums import DeliveryStatus
from chat_service.domain.events import DomainEvent, OutboxEntry
from chat_service.domain.model import Conversation, IdempotencyRecord, Message
from chat_service.domain.serialization import event_to_dict
from chat_service.domain.text import search_key
from chat_service.ports import (
    ConversationChange,
    ConversationCursor,
    ConversationQuery,
    DuplicateMessage,
    StoreUnavailable,
    VersionConflict,
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
        sql, params = _select_conversations(tenant_id, query, _positive(limit), after)
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
        sql, params = _select_messages(
            tenant_id,
            conversation_id,
            limit=_positive(limit),
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
            sql, params = _select_messages(
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
        if change.conversation.version != change.expected_version + 1:
            raise ValueError("the new conversation version must be expected_version + 1")
        # Encoded here, so the writer thread holds the write lock for SQL only.
        encoded = _EncodedChange.of(change)
        await self._write(lambda c: _write_change(c, encoded))

    async def update_delivery_status(
        self,
        tenant_id: str,
        message_id: str,
        status: DeliveryStatus,
        event: DomainEvent | None = None,
    ) -> bool:
        return await self._write(
            lambda c: _advance_delivery_status(c, tenant_id, message_id, status, event)
        )

    async def claim_outbox(
        self, owner: str, *, limit: int, lease_seconds: float
    ) -> Sequence[OutboxEntry]:
        lease = round(lease_seconds * 1_000_000)
        return await self._write(lambda c: outbox.claim(c, owner, _positive(limit), lease))

    async def mark_published(self, owner: str, positions: Sequence[int]) -> None:
        if positions:
            await self._write(lambda c: outbox.mark_published(c, owner, positions))

    async def read_events(
        self, *, after_position: int, limit: int, tenant_id: str | None = None
    ) -> Sequence[OutboxEntry]:
        # One writer commits positions in order, so a reader never sees a
        # later position before an earlier one (outbox.py).
        limit = _positive(limit)
        self._check_open()
        return await self._readers.run(
            lambda c: outbox.read_events(c, after_position, limit, tenant_id)
        )

    async def last_event_position(self) -> int:
        self._check_open()
        return await self._readers.run(outbox.last_position)

    async def prune_outbox(self, *, published_before: datetime, keep_last: int, limit: int) -> int:
        before = to_micros(published_before)
        limit = _positive(limit)
        return await self._write(lambda c: outbox.prune(c, before, max(keep_last, 0), limit))

    # ----------------------------------------------------------- plumbing

    async def _read_all(
        self, sql: str, params: Params | tuple[object, ...], decode: Callable[[sqlite3.Row], _T]
    ) -> list[_T]:
        self._check_open()
        return await self._readers.run(lambda c: _fetch_all(c, sql, params, decode))

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
        journal = writer.execute("PRAGMA journal_mode = WAL").fetchone()[0]
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


# -------------------------------------------------------------- read queries


def _fetch_all(
    connection: sqlite3.Connection,
    sql: str,
    params: Params | tuple[object, ...],
    decode: Callable[[sqlite3.Row], _T],
) -> list[_T]:
    return [decode(row) for row in connection.execute(sql, params)]


def _select_conversations(
    tenant_id: str,
    query: ConversationQuery,
    limit: int,
    after: ConversationCursor | None,
) -> tuple[str, Params]:
    where = ["c.tenant_id = :tenant_id"]
    params: Params = {"tenant_id": tenant_id, "limit": limit}
    if query.status is not None:
        where.append("c.status = :status")
        params["status"] = query.status.value
    if query.channel is not None:
        where.append("c.channel = :channel")
        params["channel"] = query.channel.value
    if query.user_id:
        where.append("c.user_id = :user_id")
        params["user_id"] = query.user_id
    if query.start_time is not None:
        where.append("c.created_at >= :start_time")
        params["start_time"] = to_micros(query.start_time)
    if query.end_time is not None:
        where.append("c.created_at < :end_time")
        params["end_time"] = to_micros(query.end_time)
    if query.search_query:
        # instr() is a plain substring test: unlike LIKE, it gives % and _
        # no meaning, so the query needs no escaping. Both sides are
        # put in search_key form in Python (SQLite folds ASCII only).
        where.append(
            "EXISTS (SELECT 1 FROM messages AS m WHERE m.conversation_id = c.conversation_id"
            " AND instr(m.search_text, :search) > 0)"
        )
        params["search"] = search_key(query.search_query)
    if after is not None:
        # Keyset pagination: a row-value comparison the index serves directly.
        beyond = "<" if query.descending else ">"
        where.append(f"(c.created_at, c.conversation_id) {beyond} (:after_time, :after_id)")
        params["after_time"] = to_micros(after.created_at)
        params["after_id"] = after.conversation_id
    order = "DESC" if query.descending else "ASC"
    sql = (
        "SELECT c.* FROM conversations AS c WHERE "  # noqa: S608 (fixed fragments; values bound)
        + " AND ".join(where)
        + f" ORDER BY c.created_at {order}, c.conversation_id {order} LIMIT :limit"
    )
    return sql, params


def _select_messages(
    tenant_id: str,
    conversation_id: str,
    *,
    limit: int,
    after_sequence: int | None = None,
    through_sequence: int | None = None,
    descending: bool = False,
) -> tuple[str, Params]:
    where = ["conversation_id = :conversation_id", "tenant_id = :tenant_id"]
    params: Params = {"conversation_id": conversation_id, "tenant_id": tenant_id, "limit": limit}
    if after_sequence is not None:
        where.append("sequence < :after" if descending else "sequence > :after")
        params["after"] = after_sequence
    if through_sequence is not None:
        where.append("sequence <= :through")
        params["through"] = through_sequence
    order = "DESC" if descending else "ASC"
    sql = (
        "SELECT * FROM messages WHERE "  # noqa: S608 (fixed fragments; values bound)
        + " AND ".join(where)
        + f" ORDER BY sequence {order} LIMIT :limit"
    )
    return sql, params


def _positive(limit: int) -> int:
    # SQLite reads a negative LIMIT as "no limit"; refuse it instead.
    if limit < 1:
        raise ValueError(f"limit must be positive, got {limit}")
    return limit


# ------------------------------------------------------------- transactions


_INSERT_CONVERSATION = """
INSERT INTO conversations (
    conversation_id, tenant_id, user_id, channel, status, created_at, updated_at,
    last_sequence, version, session_id, status_reason, state, channel_metadata, fence
) VALUES (
    :conversation_id, :tenant_id, :user_id, :channel, :status, :created_at, :updated_at,
    :last_sequence, :version, :session_id, :status_reason, :state, :channel_metadata, :fence
)
"""

_REPLACE_CONVERSATION = """
UPDATE conversations SET
    user_id = :user_id, channel = :channel, status = :status,
    created_at = :created_at, updated_at = :updated_at,
    last_sequence = :last_sequence, version = :version, session_id = :session_id,
    status_reason = :status_reason, state = :state, channel_metadata = :channel_metadata,
    fence = coalesce(:fence, fence)
WHERE conversation_id = :conversation_id AND tenant_id = :tenant_id
    AND version = :expected_version
    AND (:fence IS NULL OR fence IS NULL OR fence <= :fence)
"""

_INSERT_MESSAGE = """
INSERT INTO messages (
    conversation_id, sequence, tenant_id, message_id, role, channel, user_id, content,
    search_text, created_at, delivery_status, client_time, channel_metadata,
    reply_to_message_id, fingerprint
) VALUES (
    :conversation_id, :sequence, :tenant_id, :message_id, :role, :channel, :user_id, :content,
    :search_text, :created_at, :delivery_status, :client_time, :channel_metadata,
    :reply_to_message_id, :fingerprint
)
"""

# A record is saved, not inserted: the latest result of a message id wins.
_SAVE_RECORD = """
INSERT OR REPLACE INTO idempotency_records (tenant_id, message_id, fingerprint, result, created_at)
VALUES (:tenant_id, :message_id, :fingerprint, :result, :created_at)
"""

_APPEND_EVENT = "INSERT INTO outbox (tenant_id, event) VALUES (?, ?)"

_UNIQUENESS = frozenset({sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY, sqlite3.SQLITE_CONSTRAINT_UNIQUE})


@dataclass(frozen=True, slots=True)
class _EncodedChange:
    """A ConversationChange as SQL parameters, encoded before it reaches the
    writer thread so that the write lock is held for SQL only."""

    conversation_id: str
    expected_version: int
    fencing_token: int | None
    conversation: Params
    messages: list[tuple[str, Params]]
    events: list[tuple[str, str]]
    record: Params | None

    @classmethod
    def of(cls, change: ConversationChange) -> _EncodedChange:
        return cls(
            conversation_id=change.conversation.conversation_id,
            expected_version=change.expected_version,
            fencing_token=change.fencing_token,
            conversation=conversation_params(change.conversation) | {"fence": change.fencing_token},
            messages=[(m.message_id, message_params(m)) for m in change.messages],
            events=_event_rows(change.events),
            record=None if change.record is None else record_params(change.record),
        )


def _write_change(connection: sqlite3.Connection, change: _EncodedChange) -> None:
    if change.expected_version == 0:
        try:
            connection.execute(_INSERT_CONVERSATION, change.conversation)
        except sqlite3.IntegrityError as error:
            raise VersionConflict(
                f"conversation {change.conversation_id!r} already exists"
            ) from error
    else:
        replaced = connection.execute(
            _REPLACE_CONVERSATION,
            change.conversation | {"expected_version": change.expected_version},
        )
        if replaced.rowcount != 1:
            raise VersionConflict(
                f"conversation {change.conversation_id!r} is not at version "
                f"{change.expected_version}, or was written under a newer lock than "
                f"fencing token {change.fencing_token}"
            )
    for message_id, params in change.messages:
        try:
            connection.execute(_INSERT_MESSAGE, params)
        except sqlite3.IntegrityError as error:
            if error.sqlite_errorcode in _UNIQUENESS:
                raise DuplicateMessage(message_id) from error
            raise
    connection.executemany(_APPEND_EVENT, change.events)
    if change.record is not None:
        connection.execute(_SAVE_RECORD, change.record)


def _advance_delivery_status(
    connection: sqlite3.Connection,
    tenant_id: str,
    message_id: str,
    status: DeliveryStatus,
    event: DomainEvent | None,
) -> bool:
    events = _event_rows(() if event is None else (event,))
    row = connection.execute(
        "SELECT delivery_status FROM messages WHERE tenant_id = ? AND message_id = ?",
        (tenant_id, message_id),
    ).fetchone()
    if row is None or not DeliveryStatus(row["delivery_status"]).can_advance_to(status):
        return False
    connection.execute(
        "UPDATE messages SET delivery_status = ? WHERE tenant_id = ? AND message_id = ?",
        (status.value, tenant_id, message_id),
    )
    connection.executemany(_APPEND_EVENT, events)
    return True


def _event_rows(events: Iterable[DomainEvent]) -> list[tuple[str, str]]:
    return [(event.tenant_id, dump_json(event_to_dict(event))) for event in events]

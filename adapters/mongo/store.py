"""ConversationStore on MongoDB through pymongo's AsyncMongoClient: the
production store.

Collections: `conversations` (_id: the conversation id), `messages`,
`idempotency_records`, `outbox` (_id: the event's position) and `counters`.
Documents are in documents.py, indexes in schema.py; `open` creates the
indexes. The store answers the port from three parts: reads.py
(conversations, messages, records), event_log.py (the outbox) and the
write path, transactions.py or journal.py (below).

Atomic changes. On a replica set or a sharded cluster a ConversationChange
is one multi-document transaction (transactions.py). A standalone server
has none; there a change goes through the journalled write of journal.py,
whose docstring gives the write order and why it never loses an event or
leaves a sequence gap. `open` tells the two apart from the server's `hello`,
unless told (`transactions=`).

Outbox positions. The outbox is also the event log, read by position (live
tails, resumable watches), so positions must become visible in increasing
order. In a transaction, the events are numbered from a counter document
incremented by the same transaction: commits then settle positions in
order by themselves. The price is contention: every transaction that
writes events writes that one document, and MongoDB lets one such
transaction at a time go on (the others abort with a write conflict and
retry). The increment therefore comes last, just before the events and the
commit, to hold the counter as briefly as can be; changes without events
never touch it. (Numbering outside the transaction would avoid the
conflicts but let a later position commit before an earlier one, which a
reader of the log cannot tell from a lost event.) Journalled writes list
their positions as in flight instead; see positions.py.

Durability. Every write asks for write concern majority with journal
(`w: "majority", j: true`; a transaction's commit inherits it), and the
event log (the outbox, and how far it is settled) is read at read concern
majority. So on a replica set an acknowledged message survives a failover,
and the relay and watches never see an event a failover could roll back.
A standalone server (and nx-27017, the test server) has no replicas: there
majority means "in this server's journal", which survives a crash of the
process but not the loss of its disk, and nothing fails over.

Outages. Timeouts derive from the request timeout (see `open`). Every driver
error that means "no server" becomes StoreUnavailable. The store keeps no
connection state of its own, and the driver reconnects by itself, so when
MongoDB is back the same instance works again without being reopened. A
journalled write the outage cut before its commit leaves its conversation
leased to it; the next write under the conversation's lock (a higher
fencing token) takes the lease over at once (journal.py).

Cancellation. As with SqliteStore, a write runs to its end even when its
caller is cancelled (like a write whose answer was lost, it may still
commit), so no protocol is ever cut between two steps; close() waits for
writes still running.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar

from pymongo import AsyncMongoClient
from pymongo.errors import ConfigurationError

from adapters.mongo.documents import (
    DELIVERY_LEASE,
    MESSAGES,
    EncodedChange,
    Keys,
    delivery_free,
    encode_change,
    message_from_document,
)
from adapters.mongo.errors import translated_errors
from adapters.mongo.event_log import EventLog
from adapters.mongo.filters import all_of
from adapters.mongo.journal import Journal
from adapters.mongo.reads import Reads
from adapters.mongo.schema import Database, ensure_schema
from adapters.mongo.transactions import TransactionalWrites, supports_transactions
from adapters.storage.changes import check_change
from adapters.storage.times import seconds_to_micros, to_micros
from chat_service.domain.enums import Channel, DeliveryStatus
from chat_service.domain.event_codec import event_to_dict
from chat_service.domain.events import DomainEvent, OutboxEntry
from chat_service.domain.model import Conversation, IdempotencyRecord, Message
from chat_service.domain.serialization import Document
from chat_service.ports import (
    ConversationChange,
    ConversationCursor,
    ConversationQuery,
    DeliveryClaimant,
    StoreUnavailable,
)

_T = TypeVar("_T")

Client = AsyncMongoClient[dict[str, Any]]

DEFAULT_DATABASE = "chat_service"
DEFAULT_RECORD_TTL = timedelta(days=7)
DEFAULT_WRITE_LEASE = timedelta(seconds=10)

# Selecting a server and opening a connection take milliseconds while
# MongoDB is up. Past a few seconds it is down, or electing a primary
# (about 10 s), and answering UNAVAILABLE at once (retryable, with RetryInfo)
# serves the caller better than holding its request for the whole
# REQUEST_TIMEOUT_MS (pymongo waits 30 s to select and 20 s to connect by
# default). 3 s still rides over a dropped connection or a server restart
# of a second or two.
_FAIL_FAST_MS = 3_000


class ChangeWrites(Protocol):
    """How changes reach MongoDB: journal.Journal or transactions.TransactionalWrites."""

    async def write(self, change: EncodedChange) -> None: ...

    async def advance_delivery_status(
        self,
        tenant_id: str,
        message_id: str,
        status: DeliveryStatus,
        event: Document | None,
        *,
        platform_message_id: str = "",
        channel_data: Mapping[str, str | int | bool] | None = None,
    ) -> bool: ...

    async def requeue_delivery(
        self, tenant_id: str, message_id: str, event: Document
    ) -> Document | None: ...


class InvalidMongoUri(ValueError):
    """MONGODB_URI is one pymongo cannot use (a configuration error)."""


class MongoStore:
    """The ConversationStore port on MongoDB. Build it with `open()`."""

    def __init__(
        self,
        client: Client,
        database: Database,
        *,
        transactions: bool,
        keys: Keys,
        iter_batch_size: int,
        time_limit: float,
        write_lease: timedelta,
    ) -> None:
        self._client = client
        self._database = database
        self._keys = keys
        # Journalled writes also shape the reads (what is visible, through
        # their recovery); the transactional ones need nothing of the kind.
        self._journal = (
            None
            if transactions
            else Journal(database, keys=keys, lease=write_lease, time_limit=time_limit)
        )
        recovery = None if self._journal is None else self._journal.recovery
        self._writes: ChangeWrites = self._journal or TransactionalWrites(
            client, database, keys=keys, time_limit=time_limit
        )
        self._reads = Reads(database, keys=keys, recovery=recovery, iter_batch_size=iter_batch_size)
        self._events = EventLog(database, recovery=recovery)
        self._running: set[asyncio.Task[Any]] = set()
        self._closed = False

    @classmethod
    async def open(
        cls,
        uri: str,
        *,
        database: str | None = None,
        max_pool_size: int = 100,
        timeout_ms: int = 30_000,
        transactions: bool | None = None,
        iter_batch_size: int = 500,
        record_ttl: timedelta = DEFAULT_RECORD_TTL,
        write_lease: timedelta = DEFAULT_WRITE_LEASE,
        client_options: Mapping[str, Any] | None = None,
    ) -> MongoStore:
        """Connect, check the server, create the indexes and bring documents
        of earlier versions up to date (idempotently; see schema.py).

        `database`: else the URI's path, else "chat_service".
        `max_pool_size`: connections per server (MAX_CONNECTIONS_MONGO).
        `timeout_ms`: the request timeout (REQUEST_TIMEOUT_MS). It bounds each
        round trip, the wait for a pooled connection and the retries of a
        transaction; selecting a server and connecting give up after at most
        3 s, so that an outage is UNAVAILABLE at once rather than a hang.
        `transactions`: None to ask the server (replica sets and mongos have
        them), or force either write path.
        `record_ttl`: idempotency records expire this long after they were
        saved (TTL index; 7 days by default). A retry later than that is
        taken for a new request.
        `write_lease`: the journalled write's conversation lease (no
        transactions only): how long a writer that died mid-write keeps its
        conversation from being written by writes that hold no newer lock
        (a higher fencing token takes the lease over at once).
        `client_options`: more AsyncMongoClient options (TLS, command
        monitoring listeners...); they win over the ones derived here.

        Raises StoreUnavailable when MongoDB cannot be reached, and
        InvalidMongoUri when pymongo refuses the URI itself.
        """
        if max_pool_size < 1 or timeout_ms < 1 or iter_batch_size < 1:
            raise ValueError("max_pool_size, timeout_ms and iter_batch_size must be positive")
        options: dict[str, Any] = {
            "maxPoolSize": max_pool_size,
            "serverSelectionTimeoutMS": min(timeout_ms, _FAIL_FAST_MS),
            "connectTimeoutMS": min(timeout_ms, _FAIL_FAST_MS),
            # No single round trip, nor the wait for a pooled connection
            # when all are busy, is worth more than the request it serves.
            "socketTimeoutMS": timeout_ms,
            "waitQueueTimeoutMS": timeout_ms,
            "appname": "chat-service",
            "tz_aware": True,
            # Durability (see the module docstring): a write is acknowledged
            # once a majority of the replica set has it in its journal, so a
            # failover cannot roll back an acknowledged message.
            "w": "majority",
            "journal": True,
            **(client_options or {}),
        }
        try:
            client: Client = AsyncMongoClient(uri, **options)
        except (ConfigurationError, ValueError, TypeError) as exc:
            # A URI pymongo refuses (bad options, unknown scheme parts): the
            # operator's mistake, not an outage. pymongo's text names the
            # option, never the password.
            raise InvalidMongoUri(str(exc)) from None
        try:
            db: Database = (
                client.get_default_database(default=DEFAULT_DATABASE)
                if database is None
                else client[database]
            )
            with translated_errors("open"):
                hello = await client.admin.command("hello")
                keys = await ensure_schema(db, record_ttl=record_ttl)
        except BaseException:
            await client.close()
            raise
        return cls(
            client,
            db,
            transactions=supports_transactions(hello) if transactions is None else transactions,
            keys=keys,
            iter_batch_size=iter_batch_size,
            time_limit=timeout_ms / 1000,
            write_lease=write_lease,
        )

    @property
    def database_name(self) -> str:
        return self._database.name

    @property
    def uses_transactions(self) -> bool:
        """Whether changes are written in transactions (else journalled)."""
        return self._journal is None

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await asyncio.gather(*self._running, return_exceptions=True)
        await self._client.close()

    # ------------------------------------------------------------- reads

    async def get_conversation(self, tenant_id: str, conversation_id: str) -> Conversation | None:
        self._check_open()
        return await self._reads.get_conversation(tenant_id, conversation_id)

    async def list_conversations(
        self,
        tenant_id: str,
        query: ConversationQuery,
        *,
        limit: int,
        after: ConversationCursor | None = None,
    ) -> Sequence[Conversation]:
        self._check_open()
        return await self._reads.list_conversations(tenant_id, query, limit=limit, after=after)

    async def list_messages(
        self,
        tenant_id: str,
        conversation_id: str,
        *,
        limit: int,
        after_sequence: int | None = None,
        descending: bool = False,
    ) -> Sequence[Message]:
        self._check_open()
        return await self._reads.list_messages(
            tenant_id,
            conversation_id,
            limit=limit,
            after_sequence=after_sequence,
            descending=descending,
        )

    async def iter_messages(
        self,
        tenant_id: str,
        conversation_id: str,
        *,
        after_sequence: int = 0,
        through_sequence: int | None = None,
    ) -> AsyncIterator[Message]:
        self._check_open()
        messages = self._reads.iter_messages(
            tenant_id,
            conversation_id,
            after_sequence=after_sequence,
            through_sequence=through_sequence,
        )
        # Closed with this iterator, so that its cursor is freed as early.
        async with contextlib.aclosing(messages):
            async for message in messages:
                yield message

    async def get_message(self, tenant_id: str, message_id: str) -> Message | None:
        self._check_open()
        return await self._reads.get_message(tenant_id, message_id)

    async def get_record(self, tenant_id: str, message_id: str) -> IdempotencyRecord | None:
        self._check_open()
        return await self._reads.get_record(tenant_id, message_id)

    # ------------------------------------------------------------ writes

    async def write(self, change: ConversationChange) -> None:
        check_change(change)
        self._check_open()
        await self._run_to_end(self._write(change))

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
        self._check_open()
        return await self._run_to_end(
            self._update_delivery_status(
                tenant_id, message_id, status, event, platform_message_id, channel_data
            )
        )

    async def find_by_platform_id(
        self, tenant_id: str, channel: Channel, platform_message_id: str
    ) -> Message | None:
        self._check_open()
        return await self._reads.find_by_platform_id(tenant_id, channel, platform_message_id)

    async def list_pending_deliveries(
        self,
        *,
        limit: int,
        after: tuple[datetime, str] | None = None,
        claimable_by: DeliveryClaimant | None = None,
    ) -> Sequence[Message]:
        self._check_open()
        return await self._reads.list_pending_deliveries(
            limit=limit, after=after, claimable_by=claimable_by
        )

    async def requeue_delivery(
        self, tenant_id: str, message_id: str, event: DomainEvent
    ) -> Message | None:
        self._check_open()
        return await self._run_to_end(self._requeue_delivery(tenant_id, message_id, event))

    async def claim_delivery(
        self, tenant_id: str, message_id: str, owner: str, *, now: datetime, lease_seconds: float
    ) -> bool:
        self._check_open()
        at = to_micros(now)
        # One conditional update of the message document (atomic on every
        # server, with or without transactions): of two claimants, one wins.
        where = all_of(
            {**self._keys.where(tenant_id, message_id), "delivery_status": "pending"},
            delivery_free(owner, at),
        )
        lease = {"owner": owner, "until": at + seconds_to_micros(lease_seconds)}
        with translated_errors("claim_delivery"):
            claimed = await self._run_to_end(
                self._database[MESSAGES].update_one(where, {"$set": {DELIVERY_LEASE: lease}})
            )
        return claimed.matched_count == 1

    async def release_delivery(self, tenant_id: str, message_id: str, owner: str) -> None:
        self._check_open()
        where = {**self._keys.where(tenant_id, message_id), f"{DELIVERY_LEASE}.owner": owner}
        with translated_errors("release_delivery"):
            await self._run_to_end(
                self._database[MESSAGES].update_one(where, {"$unset": {DELIVERY_LEASE: ""}})
            )

    async def _write(self, change: ConversationChange) -> None:
        with translated_errors("write"):
            await self._writes.write(encode_change(change, stored_at=datetime.now(UTC)))

    async def _update_delivery_status(
        self,
        tenant_id: str,
        message_id: str,
        status: DeliveryStatus,
        event: DomainEvent | None,
        platform_message_id: str,
        channel_data: Mapping[str, str | int | bool] | None,
    ) -> bool:
        with translated_errors("update_delivery_status"):
            return await self._writes.advance_delivery_status(
                tenant_id,
                message_id,
                status,
                None if event is None else event_to_dict(event),
                platform_message_id=platform_message_id,
                channel_data=channel_data,
            )

    async def _requeue_delivery(
        self, tenant_id: str, message_id: str, event: DomainEvent
    ) -> Message | None:
        with translated_errors("requeue_delivery"):
            moved = await self._writes.requeue_delivery(tenant_id, message_id, event_to_dict(event))
        return None if moved is None else message_from_document(moved)

    # ----------------------------------------------------------- outbox

    async def claim_outbox(
        self, owner: str, *, limit: int, lease_seconds: float
    ) -> Sequence[OutboxEntry]:
        self._check_open()
        return await self._events.claim(owner, limit=limit, lease_seconds=lease_seconds)

    async def mark_published(self, owner: str, positions: Sequence[int]) -> None:
        self._check_open()
        await self._events.mark_published(owner, positions)

    async def read_events(
        self, *, after_position: int, limit: int, tenant_id: str | None = None
    ) -> Sequence[OutboxEntry]:
        self._check_open()
        return await self._events.read(
            after_position=after_position, limit=limit, tenant_id=tenant_id
        )

    async def last_event_position(self) -> int:
        self._check_open()
        return await self._events.last_position()

    async def prune_outbox(self, *, published_before: datetime, keep_last: int, limit: int) -> int:
        self._check_open()
        return await self._events.prune(
            published_before=published_before, keep_last=keep_last, limit=limit
        )

    # ----------------------------------------------------------- plumbing

    async def _run_to_end(self, work: Coroutine[Any, Any, _T]) -> _T:
        """Runs `work` in a task of its own that a cancelled caller does not
        cancel; close() waits for it."""
        task = asyncio.ensure_future(work)
        self._running.add(task)
        task.add_done_callback(_forget(self._running))
        return await asyncio.shield(task)

    def _check_open(self) -> None:
        if self._closed:
            raise StoreUnavailable("the MongoDB store is closed")


def _forget(running: set[asyncio.Task[Any]]) -> Callable[[asyncio.Task[Any]], None]:
    def done(task: asyncio.Task[Any]) -> None:
        running.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a caller that was cancelled never will

    return done

"""ConversationStore on MongoDB through pymongo's AsyncMongoClient: the
production store.

Collections: `conversations` (_id: the conversation id), `messages`,
`idempotency_records`, `outbox` (_id: the event's position) and `counters`.
Documents are in documents.py, indexes in schema.py; `open` creates the
indexes.

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
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar

from bson.int64 import Int64
from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError
from pymongo.read_concern import ReadConcern

from adapters.mongo.documents import (
    CONVERSATIONS,
    COUNTERS,
    MESSAGES,
    OUTBOX,
    OUTBOX_PRUNED,
    RECORDS,
    EncodedChange,
    Keys,
    conversation_from_document,
    encode_change,
    epoch_micros,
    message_from_document,
    outbox_entry,
    record_from_document,
)
from adapters.mongo.errors import translated_errors
from adapters.mongo.filters import all_of, literal_pattern
from adapters.mongo.journal import Journal, now_micros
from adapters.mongo.schema import Collection, Database, ensure_schema
from adapters.mongo.transactions import TransactionalWrites, supports_transactions
from chat_service.domain.enums import DeliveryStatus
from chat_service.domain.events import DomainEvent, OutboxEntry
from chat_service.domain.model import Conversation, IdempotencyRecord, Message
from chat_service.domain.serialization import Document, event_to_dict
from chat_service.domain.text import search_key
from chat_service.ports import (
    ConversationChange,
    ConversationCursor,
    ConversationQuery,
    EventsPruned,
    StoreUnavailable,
)

_T = TypeVar("_T")

Client = AsyncMongoClient[dict[str, Any]]

# A page's end: (created_us, conversation_id) of its last conversation.
Keyset = tuple[int, str]

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

_MAJORITY = ReadConcern("majority")

# Conversations examined per round of a search (see _search).
_SEARCH_BATCH = 100


class ChangeWrites(Protocol):
    """How changes reach MongoDB: journal.Journal or transactions.TransactionalWrites."""

    async def write(self, change: EncodedChange) -> None: ...

    async def advance_delivery_status(
        self, tenant_id: str, message_id: str, status: DeliveryStatus, event: Document | None
    ) -> bool: ...


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
        self._conversations: Collection = database[CONVERSATIONS]
        self._messages: Collection = database[MESSAGES]
        self._records: Collection = database[RECORDS]
        # The event log (what the relay publishes, what watches resume from)
        # is read at majority: nothing a failover could roll back.
        self._outbox: Collection = database[OUTBOX].with_options(read_concern=_MAJORITY)
        self._own_outbox_writes: Collection = database[OUTBOX]
        self._counters: Collection = database[COUNTERS].with_options(read_concern=_MAJORITY)
        self._keys = keys
        # Journalled writes also shape the reads (what is visible); the
        # transactional ones need nothing of the kind.
        self._journal = (
            None
            if transactions
            else Journal(database, keys=keys, lease=write_lease, time_limit=time_limit)
        )
        self._writes: ChangeWrites = self._journal or TransactionalWrites(
            client, database, keys=keys, time_limit=time_limit
        )
        self._iter_batch_size = iter_batch_size
        self._time_limit = time_limit
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

        Raises StoreUnavailable when MongoDB cannot be reached.
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
        client: Client = AsyncMongoClient(uri, **options)
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
        with translated_errors("get_conversation"):
            found = await self._conversations.find_one(
                # version 0: a journalled creation that has not committed.
                {"_id": conversation_id, "tenant_id": tenant_id, "version": {"$gt": 0}}
            )
        return None if found is None else conversation_from_document(found)

    async def list_conversations(
        self,
        tenant_id: str,
        query: ConversationQuery,
        *,
        limit: int,
        after: ConversationCursor | None = None,
    ) -> Sequence[Conversation]:
        self._check_open()
        limit = _positive(limit)
        keyset = None if after is None else (epoch_micros(after.created_at), after.conversation_id)
        with translated_errors("list_conversations"):
            if query.search_query:
                return await self._search(tenant_id, query, limit, keyset)
            found = await self._find_conversations(tenant_id, query, limit, keyset)
        return [conversation_from_document(document) for document in found]

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
        limit = _positive(limit)
        with translated_errors("list_messages"):
            through = await self._visible_through(tenant_id, conversation_id)
            if through == 0:
                return []
            sequence: Document = {}
            if after_sequence is not None:
                sequence["$lt" if descending else "$gt"] = after_sequence
            if through is not None:
                sequence["$lte"] = through
            where: Document = {"tenant_id": tenant_id, "conversation_id": conversation_id}
            if sequence:
                where["sequence"] = sequence
            found = (
                await self._messages.find(where)
                .sort("sequence", -1 if descending else 1)
                .limit(limit)
                .to_list()
            )
        return [message_from_document(document) for document in found]

    async def iter_messages(
        self,
        tenant_id: str,
        conversation_id: str,
        *,
        after_sequence: int = 0,
        through_sequence: int | None = None,
    ) -> AsyncIterator[Message]:
        # One cursor, fetched a batch at a time (batch_size), so memory holds
        # one batch however long the conversation.
        self._check_open()
        sequence: Document = {"$gt": after_sequence}
        with translated_errors("iter_messages"):
            visible = await self._visible_through(tenant_id, conversation_id)
        for bound in (visible, through_sequence):
            if bound is not None:
                sequence["$lte"] = min(bound, sequence.get("$lte", bound))
        where = {"tenant_id": tenant_id, "conversation_id": conversation_id, "sequence": sequence}
        cursor = self._messages.find(where).sort("sequence", 1).batch_size(self._iter_batch_size)
        try:
            while True:
                try:
                    with translated_errors("iter_messages"):
                        document = await cursor.next()
                except StopAsyncIteration:
                    return
                yield message_from_document(document)
        finally:
            # Frees the server-side cursor early; during an outage the server
            # has lost it anyway.
            with contextlib.suppress(PyMongoError):
                await cursor.close()

    async def get_message(self, tenant_id: str, message_id: str) -> Message | None:
        self._check_open()
        with translated_errors("get_message"):
            found = await self._messages.find_one(self._keys.where(tenant_id, message_id))
            if found is None or (
                self._journal is not None and not await self._journal.is_visible(found)
            ):
                return None
        return message_from_document(found)

    async def get_record(self, tenant_id: str, message_id: str) -> IdempotencyRecord | None:
        self._check_open()
        with translated_errors("get_record"):
            found = await self._records.find_one(self._keys.where(tenant_id, message_id))
            if found is None and self._journal is not None:
                found = await self._journal.record_in_flight(tenant_id, message_id)
        return None if found is None else record_from_document(found)

    # ------------------------------------------------------------ writes

    async def write(self, change: ConversationChange) -> None:
        if change.conversation.version != change.expected_version + 1:
            raise ValueError("the new conversation version must be expected_version + 1")
        self._check_open()
        await self._run_to_end(self._write(change))

    async def update_delivery_status(
        self,
        tenant_id: str,
        message_id: str,
        status: DeliveryStatus,
        event: DomainEvent | None = None,
    ) -> bool:
        self._check_open()
        return await self._run_to_end(
            self._update_delivery_status(tenant_id, message_id, status, event)
        )

    async def claim_outbox(
        self, owner: str, *, limit: int, lease_seconds: float
    ) -> Sequence[OutboxEntry]:
        self._check_open()
        limit = _positive(limit)
        with translated_errors("claim_outbox"):
            unpublished: Document = {"unpublished": True}
            if self._journal is not None:
                # Events of changes committed but not rolled forward are
                # written first, so that none is ever passed over for good.
                # And no further than the settled end, as read_events: a
                # write still holding a lower position (a slow commit, a
                # delivery update, which takes no conversation lock) would
                # otherwise have its events published after later ones.
                settled = await self._journal.finish_unfinished(limit)
                unpublished["position"] = {"$lte": settled}
            now = now_micros()
            oldest = await (
                self._outbox.find(unpublished, {"_id": 1, "claimed_by": 1, "claimed_until": 1})
                .sort("position", 1)
                .limit(limit)
                .to_list()
            )
            # The run from the head up to the first row another owner holds
            # (at the head: nothing, another relay is publishing it).
            run: list[int] = []
            for document in oldest:
                holder = document.get("claimed_by")
                if holder not in (None, owner) and document.get("claimed_until", 0) > now:
                    break
                run.append(document["_id"])
            if not run:
                return []
            claimable = all_of(
                {"unpublished": True},
                {
                    "$or": [
                        {"claimed_by": None},
                        {"claimed_by": owner},
                        {"claimed_until": {"$lte": now}},
                    ]
                },
            )
            # One conditional update leases them all; the claim token tells
            # which ones this call got when another owner raced for some.
            claim = uuid.uuid4().hex
            await self._outbox.update_many(
                all_of(claimable, {"_id": {"$in": run}}),
                {
                    "$set": {
                        "claimed_by": owner,
                        "claimed_until": now + round(lease_seconds * 1_000_000),
                        "claim": claim,
                    }
                },
            )
            # Which rows this claim got: its own write, read where it was made
            # (the rows' events were read at majority above).
            got = (
                await self._own_outbox_writes.find({"_id": {"$in": run}, "claim": claim})
                .sort("position", 1)
                .to_list()
            )
            # After a race, keep only the contiguous run from the head and
            # hand the rest back: publishing out of order is what the head
            # rule exists to prevent.
            claimed: list[Document] = []
            for document in got:
                if document["_id"] != run[len(claimed)]:
                    break
                claimed.append(document)
            returned = [document["_id"] for document in got[len(claimed) :]]
            if returned:
                await self._outbox.update_many(
                    {"_id": {"$in": returned}, "claim": claim},
                    {"$set": {"claimed_by": None, "claimed_until": 0, "claim": None}},
                )
        return [outbox_entry(document) for document in claimed]

    async def read_events(
        self, *, after_position: int, limit: int, tenant_id: str | None = None
    ) -> Sequence[OutboxEntry]:
        self._check_open()
        limit = _positive(limit)
        with translated_errors("read_events"):
            position: Document = {"$gt": after_position}
            if self._journal is not None:
                # Journalled writes: not past a position still in flight.
                position["$lte"] = await self._journal.settled_through()
            if tenant_id is None:
                found = self._outbox.find({"_id": position}).sort("_id", 1)
            else:
                where = {"event.tenant_id": tenant_id, "position": position}
                found = self._outbox.find(where).sort("position", 1)
            entries = await found.limit(limit).to_list()
            # After the rows: pruning records its reach before it deletes.
            pruned = await self._pruned_through()
        if after_position < pruned:
            raise EventsPruned(after_position, pruned)
        return [outbox_entry(document) for document in entries]

    async def last_event_position(self) -> int:
        self._check_open()
        with translated_errors("last_event_position"):
            return await self._last_position()

    async def prune_outbox(self, *, published_before: datetime, keep_last: int, limit: int) -> int:
        self._check_open()
        limit = _positive(limit)
        with translated_errors("prune_outbox"):
            kept_from = await self._last_position() - max(keep_last, 0)
            head: Document = {}
            if self._journal is not None:
                # Not past a position in flight: its row may still come.
                head["_id"] = {"$lte": await self._journal.settled_through()}
            fields = {"_id": 1, "unpublished": 1, "published_at": 1, "published_us": 1}
            oldest = self._outbox.find(head, fields)
            before = epoch_micros(published_before)
            through = None
            for document in await oldest.sort("_id", 1).limit(limit).to_list():
                if document.get("unpublished"):
                    break
                published = _published_us(document)
                old = published is not None and published < before
                if not old and document["_id"] > kept_from:
                    break
                through = int(document["_id"])
            if through is None:
                return 0
            # The reach first, then the deletion: a reader that could miss a
            # deleted row sees the reach (read_events reads it last).
            await self._counters.update_one(
                {"_id": OUTBOX_PRUNED}, {"$max": {"through": Int64(through)}}, upsert=True
            )
            deleted = await self._outbox.delete_many(
                {"_id": {"$lte": Int64(through)}, "unpublished": {"$exists": False}}
            )
        return deleted.deleted_count

    async def mark_published(self, owner: str, positions: Sequence[int]) -> None:
        # Only rows this owner holds: once its lease has passed to another
        # owner, that owner publishes (again) and marks; delivery is at least once.
        self._check_open()
        if not positions:
            return
        with translated_errors("mark_published"):
            await self._outbox.update_many(
                {
                    "_id": {"$in": [Int64(position) for position in positions]},
                    "claimed_by": owner,
                    "unpublished": True,
                },
                {"$unset": {"unpublished": "", "claim": ""}, "$set": _published_now()},
            )

    # ------------------------------------------------------- write paths

    async def _write(self, change: ConversationChange) -> None:
        with translated_errors("write"):
            await self._writes.write(encode_change(change, stored_at=_utc_now()))

    async def _update_delivery_status(
        self,
        tenant_id: str,
        message_id: str,
        status: DeliveryStatus,
        event: DomainEvent | None,
    ) -> bool:
        with translated_errors("update_delivery_status"):
            return await self._writes.advance_delivery_status(
                tenant_id, message_id, status, None if event is None else event_to_dict(event)
            )

    # -------------------------------------------------------- read paths

    async def _visible_through(self, tenant_id: str, conversation_id: str) -> int | None:
        """Journalled writes only: the last sequence readers may see (0 when the
        conversation does not exist). With transactions, None: no bound needed."""
        if self._journal is None:
            return None
        bound = await self._journal.visible_bound(tenant_id, conversation_id)
        return 0 if bound is None else bound

    async def _find_conversations(
        self,
        tenant_id: str,
        query: ConversationQuery,
        limit: int,
        keyset: Keyset | None,
    ) -> list[dict[str, Any]]:
        order = -1 if query.descending else 1
        return (
            await self._conversations.find(_conversation_filter(tenant_id, query, keyset))
            .sort([("created_us", order), ("conversation_id", order)])
            .limit(limit)
            .to_list()
        )

    async def _search(
        self,
        tenant_id: str,
        query: ConversationQuery,
        limit: int,
        keyset: Keyset | None,
    ) -> list[Conversation]:
        """The other filters select conversations in keyset order, a batch at a
        time; one query per batch keeps those with a message containing the
        search text. Memory and each query stay bounded by the batch, and the
        scan stops as soon as the page is full."""
        # Both sides in their search_key form (as on SQLite); the text is
        # escaped, so it is matched as a plain substring whatever it holds.
        pattern = {"$regex": literal_pattern(search_key(query.search_query))}
        batch = max(limit, _SEARCH_BATCH)
        found: list[Conversation] = []
        while True:
            candidates = await self._find_conversations(tenant_id, query, batch, keyset)
            if not candidates:
                return found
            matching = await self._mentioning(tenant_id, candidates, pattern)
            for candidate in candidates:
                if candidate["conversation_id"] in matching:
                    found.append(conversation_from_document(candidate))
                    if len(found) == limit:
                        return found
            if len(candidates) < batch:
                return found
            last = candidates[-1]
            keyset = (last["created_us"], last["conversation_id"])

    async def _mentioning(
        self, tenant_id: str, conversations: Sequence[Mapping[str, Any]], pattern: Document
    ) -> set[str]:
        """Ids of the conversations with a visible message matching `pattern`."""
        ids = [conversation["conversation_id"] for conversation in conversations]
        where: Document = {
            "tenant_id": tenant_id,
            "conversation_id": {"$in": ids},
            "search_text": pattern,
        }
        if self._journal is None:
            return await self._conversation_ids(where)
        # Journalled writes: a reserved message counts once its conversation
        # has committed it (sequence within last_sequence).
        matching = await self._conversation_ids({**where, "_write": {"$exists": False}})
        bounds = {c["conversation_id"]: int(c.get("last_sequence", 0)) for c in conversations}
        reserved = self._messages.find(
            {**where, "_write": {"$exists": True}}, {"conversation_id": 1, "sequence": 1}
        )
        for message in await reserved.to_list():
            if message["sequence"] <= bounds[message["conversation_id"]]:
                matching.add(message["conversation_id"])
        return matching

    async def _conversation_ids(self, where: Document) -> set[str]:
        # A $group rather than distinct(): same result on MongoDB, and
        # nx-27017's distinct ignores a $regex in its filter.
        groups = await self._messages.aggregate(
            [{"$match": where}, {"$group": {"_id": "$conversation_id"}}]
        )
        return {group["_id"] for group in await groups.to_list()}

    async def _last_position(self) -> int:
        """The newest readable position, never below what pruning deleted."""
        where: Document = {}
        if self._journal is not None:
            where["_id"] = {"$lte": await self._journal.settled_through()}
        newest = await self._outbox.find(where, {"_id": 1}).sort("_id", -1).limit(1).to_list()
        return max(int(newest[0]["_id"]) if newest else 0, await self._pruned_through())

    async def _pruned_through(self) -> int:
        found = await self._counters.find_one({"_id": OUTBOX_PRUNED})
        return 0 if found is None else int(found["through"])

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


def _conversation_filter(
    tenant_id: str, query: ConversationQuery, keyset: Keyset | None
) -> Document:
    where: Document = {"tenant_id": tenant_id, "version": {"$gt": 0}}
    if query.status is not None:
        where["status"] = query.status.value
    if query.channel is not None:
        where["channel"] = query.channel.value
    if query.user_id:
        where["user_id"] = query.user_id
    ties: Document | None = None
    created: Document = {}
    if query.start_time is not None:
        created["$gte"] = epoch_micros(query.start_time)
    if query.end_time is not None:
        created["$lt"] = epoch_micros(query.end_time)
    if keyset is not None:
        # Keyset pagination: (created_us, id) beyond the cursor. The bound on
        # created_us alone lets the index seek; the $or settles the ties.
        at, conversation_id = keyset
        beyond = "$lt" if query.descending else "$gt"
        if query.descending:
            created["$lte"] = at
        else:
            created["$gte"] = max(created.get("$gte", at), at)
        ties = {
            "$or": [
                {"created_us": {beyond: at}},
                {"conversation_id": {beyond: conversation_id}},
            ]
        }
    if created:
        where["created_us"] = created
    return where if ties is None else all_of(where, ties)


def _positive(limit: int) -> int:
    # MongoDB reads a limit of 0 as "no limit"; refuse it (and negatives) instead.
    if limit < 1:
        raise ValueError(f"limit must be positive, got {limit}")
    return limit


def _forget(running: set[asyncio.Task[Any]]) -> Callable[[asyncio.Task[Any]], None]:
    def done(task: asyncio.Task[Any]) -> None:
        running.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a caller that was cancelled never will

    return done


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _published_now() -> Document:
    # `published_us` is what retention compares (an integer compares the
    # same on every server; nx-27017 gives back a date set by an update as
    # a string); `published_at` is for people reading the collection.
    now = _utc_now()
    return {"published_at": now, "published_us": epoch_micros(now)}


def _published_us(document: Mapping[str, Any]) -> int | None:
    """When an outbox row was published; None when unknown (a row marked by an
    earlier version, whose date did not come back as a date): such a row is
    pruned by count only."""
    if "published_us" in document:
        return int(document["published_us"])
    at = document.get("published_at")
    return int(epoch_micros(at)) if isinstance(at, datetime) else None

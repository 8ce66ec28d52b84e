"""The indexes of the MongoDB store, created at open, and what opening
brings up to date in a database written by an earlier version.

Creating an index that already exists with the same keys and options is a
no-op, so opening is idempotent, and safe for several processes at once.
A TTL that changed since the index was made is changed in place (collMod);
any other difference is left for an operator to resolve, with the error
naming the index.

Keys follow the queries in reads.py, event_log.py, journal.py and
recovery.py; none holds `_id` inside a compound key (nx-27017, the test
server, cannot index that).

Earlier versions, and what opening does about them (each step a no-op once
done, so safe to repeat and to run from several processes):
- conversations without `created_us` (documents.py) get it, computed from
  their `created_at`, and the index that paged on `created_at` is dropped
  (messages still PENDING get theirs from the listing of pending
  deliveries, reads.py, which alone reads it);
- messages and records with ObjectId `_id`s (from before natural ids)
  cannot be given their natural `_id` (MongoDB never changes an `_id`), so
  a database holding any keeps finding them by their unique key
  (documents.Keys), which is as fast on MongoDB; `ensure_schema` says which;
- messages from before delivery leases have no `_delivery` (documents.py):
  free to claim, as they should be; nothing to do. Leases are claimed by
  `_id` and filtered within the `pending_deliveries` index: no index of
  their own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from bson.int64 import Int64
from bson.objectid import ObjectId
from pymongo import UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError, OperationFailure

from adapters.mongo.documents import (
    CONVERSATIONS,
    COUNTERS,
    MESSAGES,
    OUTBOX,
    OUTBOX_POSITION,
    RECORDS,
    Keys,
    epoch_micros,
)
from chat_service.domain.serialization import parse_datetime

Database = AsyncDatabase[dict[str, Any]]
Collection = AsyncCollection[dict[str, Any]]

# Server error codes of an index that exists with other options or keys.
_INDEX_CONFLICTS = frozenset({85, 86})
_INDEX_NOT_FOUND = 27

# Indexes of earlier versions, by collection and keys, dropped at open.
_OBSOLETE_INDEXES = (
    # Paged on the ISO string `created_at`; now on `created_us`.
    (CONVERSATIONS, ("tenant_id", "created_at", "conversation_id")),
)

# Conversations given their `created_us` per round trip.
_BACKFILL_BATCH = 500

# The lowest ObjectId: `_id >= it` matches exactly the ObjectId `_id`s (a
# comparison only matches values of its own BSON type), on an index range.
_LOWEST_OBJECT_ID = ObjectId(b"\x00" * 12)


@dataclass(frozen=True, slots=True)
class IndexSpec:
    collection: str
    name: str
    keys: tuple[str, ...]  # all ascending: every query reads them in either direction
    unique: bool = False
    sparse: bool = False
    ttl: timedelta | None = None
    partial: Mapping[str, Any] = field(default_factory=dict)

    def options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"name": self.name}
        if self.unique:
            options["unique"] = True
        if self.sparse:
            options["sparse"] = True
        if self.ttl is not None:
            options["expireAfterSeconds"] = int(self.ttl.total_seconds())
        if self.partial:
            options["partialFilterExpression"] = dict(self.partial)
        return options


def indexes(*, record_ttl: timedelta) -> tuple[IndexSpec, ...]:
    return (
        # ListConversations: tenant, then keyset order (creation time, id).
        IndexSpec(
            CONVERSATIONS, "by_tenant_creation", ("tenant_id", "created_us", "conversation_id")
        ),
        IndexSpec(CONVERSATIONS, "by_tenant_user", ("tenant_id", "user_id")),
        IndexSpec(CONVERSATIONS, "by_tenant_status_channel", ("tenant_id", "status", "channel")),
        # Changes committed but not yet rolled forward (journal.py); sparse,
        # so it holds only those few.
        IndexSpec(CONVERSATIONS, "unfinished_changes", ("_pending.token",), sparse=True),
        # The two identities of a message (the first is also its `_id`,
        # but is kept: older messages have ObjectId `_id`s, and a clash on it
        # names the key). (conversation_id, sequence) also serves
        # ListMessages, exports, and the search filter, which looks for the
        # query in the messages of one page of conversations at a time (an
        # unanchored substring match cannot seek any index).
        IndexSpec(MESSAGES, "message_id_per_tenant", ("tenant_id", "message_id"), unique=True),
        IndexSpec(
            MESSAGES, "sequence_per_conversation", ("conversation_id", "sequence"), unique=True
        ),
        IndexSpec(RECORDS, "record_per_message", ("tenant_id", "message_id"), unique=True),
        IndexSpec(RECORDS, "records_expire", ("stored_at",), ttl=record_ttl),
        # Claims read unpublished events in position order; the index holds
        # only those, however long the published history.
        IndexSpec(
            OUTBOX,
            "claimable",
            ("unpublished", "position"),
            partial={"unpublished": {"$exists": True}},
        ),
        # The event log read per tenant (WatchConversations); read whole, it
        # goes by _id, which is the position.
        IndexSpec(OUTBOX, "by_tenant", ("event.tenant_id", "position")),
        # Status callbacks find an outbound message by the platform's id for
        # it (reads.find_by_platform_id); only messages given one are held.
        IndexSpec(
            MESSAGES,
            "by_platform_id",
            ("tenant_id", "channel", "channel_metadata.platform_message_id"),
            partial={"channel_metadata.platform_message_id": {"$exists": True}},
        ),
        # Start-up lists the replies a crash left PENDING, in keyset order
        # (reads.list_pending_deliveries); the index holds only those.
        IndexSpec(
            MESSAGES,
            "pending_deliveries",
            ("created_us", "message_id"),
            partial={"delivery_status": "pending"},
        ),
    )


# Channels (channel_store.py): tenants' connections, the audit log of their
# changes, the inbox of acknowledged webhook calls.
CONNECTIONS = "channel_connections"
CONNECTION_AUDIT = "connection_audit"
WEBHOOK_INBOX = "webhook_inbox"
# SMS opt-outs: a platform user's latest STOP or START per connection.
OPT_OUTS = "channel_opt_outs"

CHANNEL_INDEXES = (
    IndexSpec(CONNECTIONS, "connection_per_tenant", ("tenant_id", "connection_id"), unique=True),
    IndexSpec(
        CONNECTIONS, "account_per_tenant", ("tenant_id", "channel", "account_id"), unique=True
    ),
    # Create is idempotent by request id; only connections created with one
    # have the field (connection_codec), so only they are held.
    IndexSpec(
        CONNECTIONS,
        "create_request_per_tenant",
        ("tenant_id", "request_id"),
        unique=True,
        partial={"request_id": {"$exists": True}},
    ),
    # Audit entries written with their change but not yet copied out.
    IndexSpec(CONNECTIONS, "unflushed_audit", ("_audit.id",), sparse=True),
    IndexSpec(CONNECTION_AUDIT, "audit_by_tenant", ("tenant_id", "at_us", "seq")),
    IndexSpec(
        CONNECTION_AUDIT, "audit_by_connection", ("tenant_id", "connection_id", "at_us", "seq")
    ),
    IndexSpec(
        WEBHOOK_INBOX, "delivery_per_key", ("tenant_id", "channel", "dedup_key"), unique=True
    ),
    # Claims scan what is left to process, retention what was processed.
    IndexSpec(
        WEBHOOK_INBOX,
        "unprocessed",
        ("unprocessed", "position"),
        partial={"unprocessed": {"$exists": True}},
    ),
    IndexSpec(WEBHOOK_INBOX, "processed", ("processed_us",), sparse=True),
    IndexSpec(OPT_OUTS, "opt_out_per_user", ("tenant_id", "connection_id", "user_id"), unique=True),
)


async def ensure_schema(database: Database, *, record_ttl: timedelta) -> Keys:
    """Creates the indexes and the counter, brings documents of earlier
    versions up to date, and returns how messages and records are to be
    found (see the module docstring)."""
    for spec in (*indexes(record_ttl=record_ttl), *CHANNEL_INDEXES):
        await _ensure_index(database, spec)
    await _drop_obsolete_indexes(database)
    await _ensure_counter(database)
    await _backfill_creation_times(database[CONVERSATIONS])
    return Keys(by_id=not await _holds_object_ids(database))


async def _backfill_creation_times(conversations: Collection) -> None:
    """Gives `created_us` to the conversations stored without it. (Journalled
    creations that have not committed have no `created_at` yet; their commit
    sets both.)"""
    lacking = {"created_us": {"$exists": False}, "created_at": {"$exists": True}}
    while True:
        batch = (
            await conversations.find(lacking, {"created_at": 1}).limit(_BACKFILL_BATCH).to_list()
        )
        if not batch:
            return
        # Each update takes its document out of `lacking` (or another process
        # did), so the loop ends.
        await conversations.bulk_write(
            [
                UpdateOne(
                    {"_id": found["_id"], "created_us": {"$exists": False}},
                    {"$set": {"created_us": epoch_micros(parse_datetime(found["created_at"]))}},
                )
                for found in batch
            ],
            ordered=False,
        )


async def _holds_object_ids(database: Database) -> bool:
    """Whether messages or records stored before natural `_id`s remain."""
    for name in (MESSAGES, RECORDS):
        found = await database[name].find_one({"_id": {"$gte": _LOWEST_OBJECT_ID}}, {"_id": 1})
        if found is not None:
            return True
    return False


async def _drop_obsolete_indexes(database: Database) -> None:
    # By keys, not by name: nx-27017 names indexes its own way.
    for collection, keys in _OBSOLETE_INDEXES:
        async for index in await database[collection].list_indexes():
            if tuple(index["key"]) == keys:
                try:
                    await database[collection].drop_index(index["name"])
                except OperationFailure as error:
                    # Another process opening at once dropped it first.
                    if error.code != _INDEX_NOT_FOUND:
                        raise


async def _ensure_index(database: Database, spec: IndexSpec) -> None:
    keys: Sequence[tuple[str, int]] = [(key, 1) for key in spec.keys]
    try:
        await database[spec.collection].create_index(keys, **spec.options())
    except OperationFailure as error:
        if error.code not in _INDEX_CONFLICTS or spec.ttl is None:
            raise
        # The TTL changed (a new setting): change it where it is.
        await database.command(
            "collMod",
            spec.collection,
            index={"name": spec.name, "expireAfterSeconds": int(spec.ttl.total_seconds())},
        )


async def _ensure_counter(database: Database) -> None:
    """The outbox position counter starts at 0, as a 64-bit integer (so the
    server's $inc never has to widen it), with nothing in flight
    (positions.py)."""
    # Two processes opening at once may both try to insert it; one wins.
    with contextlib.suppress(DuplicateKeyError):
        await database[COUNTERS].update_one(
            {"_id": OUTBOX_POSITION},
            {"$setOnInsert": {"value": Int64(0), "in_flight": {}}},
            upsert=True,
        )

"""The indexes of the MongoDB store, created at open.

Creating an index that already exists with the same keys and options is a
no-op, so opening is idempotent, and safe for several processes at once.
A TTL that changed since the index was made is changed in place (collMod);
any other difference is left for an operator to resolve, with the error
naming the index.

Keys follow the queries in store.py and journal.py; none holds `_id` inside
a compound key (nx-27017, the test server, cannot index that).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from bson.int64 import Int64
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
)

Database = AsyncDatabase[dict[str, Any]]
Collection = AsyncCollection[dict[str, Any]]

# Server error codes of an index that exists with other options or keys.
_INDEX_CONFLICTS = frozenset({85, 86})


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
        # ListConversations: tenant, then keyset order (created_at, id).
        IndexSpec(
            CONVERSATIONS, "by_tenant_created", ("tenant_id", "created_at", "conversation_id")
        ),
        IndexSpec(CONVERSATIONS, "by_tenant_user", ("tenant_id", "user_id")),
        IndexSpec(CONVERSATIONS, "by_tenant_status_channel", ("tenant_id", "status", "channel")),
        # Changes committed but not yet rolled forward (journal.py); sparse,
        # so it holds only those few.
        IndexSpec(CONVERSATIONS, "unfinished_changes", ("_pending.token",), sparse=True),
        # The two identities of a message. (conversation_id, sequence) also
        # serves ListMessages, exports, and the search filter, which looks
        # for the query in the messages of one page of conversations at a
        # time (an unanchored substring match cannot seek any index).
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
    )


async def ensure_schema(database: Database, *, record_ttl: timedelta) -> None:
    for spec in indexes(record_ttl=record_ttl):
        await _ensure_index(database, spec)
    await _ensure_counter(database)


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

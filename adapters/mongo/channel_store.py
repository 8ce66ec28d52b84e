"""ConnectionStore and WebhookInbox on the MongoDB store's database.

Collections (indexes in schema.py): `channel_connections`, one document per
connection in connection_codec's shape; `connection_audit`, the audit log;
`webhook_inbox` (_id: the delivery's position, numbered from a counter in
`counters`); `channel_opt_outs`, one document per (connection, user).
Everything goes through the MongoStore's client, so with its write
concern (majority, journalled) and its outage translation (StoreUnavailable).

A change and its audit entry, without transactions. A standalone server
(and nx-27017, the tests' server) has no multi-document transactions, so
atomicity comes from single-document writes: the change's own write
carries its audit entry inside the connection document (`_audit`), and the
entry is copied into `connection_audit` (an insert by the entry's id,
idempotent) and unset afterwards. `list_audit` reads both places, so an
entry is visible exactly when its change is, even if the process dies
between the two steps; the next change of the connection copies a
left-over entry out before putting its own in place. A delete marks the document deleted (with its
entry) in one write, then copies the entry and removes the document;
readers never see a marked document, and a left-over mark holding an
account or a request id is finished by whoever runs into it.

Inbox claims take one delivery per conditional findOneAndUpdate (due,
unprocessed, lease free or expired or the caller's), so several processes
claiming at once never get the same delivery on live leases. Leases compare
the caller's `now`; finish, retry_later and dead_letter take effect only for
the lease's owner.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Coroutine, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

from bson.int64 import Int64
from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError, PyMongoError

from adapters.mongo.documents import COUNTERS
from adapters.mongo.errors import translated_errors
from adapters.mongo.filters import all_of
from adapters.mongo.schema import (
    CONNECTION_AUDIT,
    CONNECTIONS,
    OPT_OUTS,
    WEBHOOK_INBOX,
    Collection,
)
from adapters.mongo.store import MongoStore
from adapters.storage.changes import positive_limit
from adapters.storage.connection_codec import (
    audit_from_dict,
    audit_to_dict,
    check_audit_of,
    check_changed_connection,
    check_new_connection,
    connection_from_dict,
    connection_to_dict,
    delivery_from_dict,
    delivery_to_dict,
    stored_error,
)
from adapters.storage.times import seconds_to_micros, to_micros
from chat_service.domain.connections import AuditEntry, ChannelConnection
from chat_service.domain.enums import Channel
from chat_service.domain.serialization import Document
from chat_service.ports import (
    ConnectionExists,
    StoreUnavailable,
    VersionConflict,
    WebhookDelivery,
)

log = logging.getLogger(__name__)

_T = TypeVar("_T")

# Counter documents (in `counters`, beside the outbox's).
_AUDIT_SEQUENCE = "connection_audit_sequence"
_INBOX_POSITION = "webhook_inbox_position"

# Rounds of a write that meets another writer's left-overs (a deletion
# mark to finish) or a concurrent change before it gives up.
_ROUNDS = 5

_LIVE = {"deleted": {"$exists": False}}


class MongoChannelStore:
    """The ConnectionStore and WebhookInbox ports on a MongoStore's database.
    Closed with that store (it owns the client)."""

    def __init__(self, store: MongoStore) -> None:
        # The store's client and database (same package): one pool, one
        # write concern, and close() waits for our writes as for its own.
        self._store = store
        database = store._database
        self._connections: Collection = database[CONNECTIONS]
        self._audit: Collection = database[CONNECTION_AUDIT]
        self._inbox: Collection = database[WEBHOOK_INBOX]
        self._counters: Collection = database[COUNTERS]
        self._opt_outs: Collection = database[OPT_OUTS]

    # -------------------------------------------------------- connections

    async def create_connection(
        self, connection: ChannelConnection, audit: AuditEntry
    ) -> ChannelConnection:
        check_new_connection(connection, audit)
        return await self._run(self._create(connection, audit))

    async def get_connection(self, tenant_id: str, connection_id: str) -> ChannelConnection | None:
        return await self._find_one({"tenant_id": tenant_id, "connection_id": connection_id})

    async def find_connection(
        self, tenant_id: str, channel: Channel, account_id: str
    ) -> ChannelConnection | None:
        return await self._find_one(
            {"tenant_id": tenant_id, "channel": channel.value, "account_id": account_id}
        )

    async def list_connections(
        self, tenant_id: str, *, channel: Channel | None, limit: int, after_id: str = ""
    ) -> Sequence[ChannelConnection]:
        limit = positive_limit(limit)
        where: Document = {"tenant_id": tenant_id, "connection_id": {"$gt": after_id}, **_LIVE}
        if channel is not None:
            where["channel"] = channel.value
        self._store._check_open()
        with translated_errors("list_connections"):
            found = (
                await self._connections.find(where).sort("connection_id", 1).limit(limit).to_list()
            )
        return [connection_from_dict(document) for document in found]

    async def update_connection(self, connection: ChannelConnection, audit: AuditEntry) -> None:
        check_changed_connection(connection, audit)
        await self._run(self._update(connection, audit))

    async def delete_connection(
        self, tenant_id: str, connection_id: str, audit: AuditEntry
    ) -> bool:
        check_audit_of(tenant_id, connection_id, audit)
        return await self._run(self._delete(tenant_id, connection_id, audit))

    async def list_audit(
        self, tenant_id: str, *, limit: int, connection_id: str = ""
    ) -> Sequence[AuditEntry]:
        limit = positive_limit(limit)
        where: Document = {"tenant_id": tenant_id}
        if connection_id:
            where["connection_id"] = connection_id
        self._store._check_open()
        with translated_errors("list_audit"):
            stored = (
                await self._audit.find(where)
                .sort([("at_us", -1), ("seq", -1)])
                .limit(limit)
                .to_list()
            )
            # Entries written with their change and not copied yet (see the
            # module docstring): part of the log all the same.
            carriers = await self._connections.find(
                all_of(where, {"_audit.id": {"$exists": True}}), {"_audit": 1}
            ).to_list()
        entries = {str(document["_id"]): document for document in stored}
        for carrier in carriers:
            pending = carrier["_audit"]
            entries.setdefault(str(pending["id"]), pending)
        newest_first = sorted(
            entries.values(), key=lambda d: (int(d["at_us"]), int(d["seq"])), reverse=True
        )
        return [audit_from_dict(document) for document in newest_first[:limit]]

    async def _create(self, connection: ChannelConnection, audit: AuditEntry) -> ChannelConnection:
        with translated_errors("create_connection"):
            for _ in range(_ROUNDS):
                if connection.request_id:
                    created = await self._connections.find_one(
                        {
                            "tenant_id": connection.tenant_id,
                            "request_id": connection.request_id,
                            **_LIVE,
                        }
                    )
                    if created is not None:
                        return connection_from_dict(created)  # the same request again
                pending = await self._pending(audit)
                document = {**connection_to_dict(connection), "_audit": pending}
                try:
                    await self._connections.insert_one(document)
                except DuplicateKeyError:
                    await self._clear_conflict(connection, creating=True)
                    continue
                await self._copy_out(document["_id"], pending)
                return connection
        raise StoreUnavailable("MongoDB (create_connection): kept meeting concurrent changes")

    async def _update(self, connection: ChannelConnection, audit: AuditEntry) -> None:
        expected = connection.version - 1
        with translated_errors("update_connection"):
            for _ in range(_ROUNDS):
                current = await self._connections.find_one(
                    {
                        "tenant_id": connection.tenant_id,
                        "connection_id": connection.connection_id,
                        **_LIVE,
                    }
                )
                if current is None or current["version"] != expected:
                    break
                # An earlier change's entry is copied out before this one's
                # takes its place in the document.
                await self._flush(current)
                pending = await self._pending(audit)
                try:
                    replaced = await self._connections.replace_one(
                        {"_id": current["_id"], "version": expected, **_LIVE},
                        {**connection_to_dict(connection), "_audit": pending},
                    )
                except DuplicateKeyError:
                    await self._clear_conflict(connection, creating=False)
                    continue
                if replaced.matched_count != 1:
                    break
                await self._copy_out(current["_id"], pending)
                return
        raise VersionConflict(
            f"connection {connection.connection_id!r} is not at version {expected}"
        )

    async def _delete(self, tenant_id: str, connection_id: str, audit: AuditEntry) -> bool:
        with translated_errors("delete_connection"):
            for _ in range(_ROUNDS):
                current = await self._connections.find_one(
                    {"tenant_id": tenant_id, "connection_id": connection_id, **_LIVE}
                )
                if current is None:
                    return False
                await self._flush(current)
                pending = await self._pending(audit)
                # The deletion and its entry in one write; the document goes
                # once the entry is copied out.
                marked = await self._connections.update_one(
                    {"_id": current["_id"], "version": current["version"], **_LIVE},
                    {"$set": {"deleted": True, "_audit": pending}},
                )
                if marked.matched_count == 1:
                    try:
                        await self._finish_deletion(current["_id"], pending)
                    except PyMongoError:
                        # Deleted all the same (readers skip the mark); the
                        # next write meeting the mark finishes the job.
                        log.warning(
                            "connection %s deleted; its marked document is removed later",
                            connection_id,
                            exc_info=True,
                        )
                    return True
        raise StoreUnavailable("MongoDB (delete_connection): kept meeting concurrent changes")

    async def _clear_conflict(self, connection: ChannelConnection, *, creating: bool) -> None:
        """A unique index refused `connection`: raises ConnectionExists for a
        live connection holding its account (or, creating, its id), after
        finishing any deletion left holding them; returns when the write
        may be tried again (the holder is gone, or, creating with a request
        id, it is the connection that request made)."""
        holds: list[Document] = [
            {"channel": connection.channel.value, "account_id": connection.account_id}
        ]
        if creating:
            holds.append({"connection_id": connection.connection_id})
            if connection.request_id:
                holds.append({"request_id": connection.request_id})
        holders = await self._connections.find(
            all_of({"tenant_id": connection.tenant_id}, {"$or": holds})
        ).to_list()
        for holder in holders:
            if holder.get("deleted"):
                await self._finish_deletion(holder["_id"], holder.get("_audit"))
                continue
            same = holder["connection_id"] == connection.connection_id
            if not creating and same:
                continue  # itself
            if (
                creating
                and connection.request_id
                and holder.get("request_id") == (connection.request_id)
            ):
                continue  # the request's own connection: the next round returns it
            raise ConnectionExists(holder["connection_id"])

    async def _finish_deletion(self, document_id: Any, pending: Mapping[str, Any] | None) -> None:
        if pending is not None:
            await self._copy_out(document_id, pending, quiet=False)
        await self._connections.delete_one({"_id": document_id, "deleted": True})

    async def _flush(self, document: Mapping[str, Any]) -> None:
        """Copies out an entry a change left in `document` (its writer died
        before it could)."""
        pending = document.get("_audit")
        if pending is not None:
            await self._copy_out(document["_id"], pending, quiet=False)

    async def _copy_out(
        self, document_id: Any, pending: Mapping[str, Any], *, quiet: bool = True
    ) -> None:
        """Moves an audit entry from its connection document to the log. With
        `quiet`, after the change committed: a failure leaves it where
        list_audit reads it too, for the next change to move."""
        entry = {key: value for key, value in pending.items() if key != "id"}
        try:
            # A duplicate: copied before, and the unset was lost.
            with contextlib.suppress(DuplicateKeyError):
                await self._audit.insert_one({"_id": pending["id"], **entry})
            await self._connections.update_one(
                {"_id": document_id, "_audit.id": pending["id"]}, {"$unset": {"_audit": ""}}
            )
        except PyMongoError:
            if not quiet:
                raise
            log.warning("audit entry of a connection change left to be copied later", exc_info=True)

    async def _pending(self, audit: AuditEntry) -> Document:
        """The audit entry as a change carries it: its id, and what orders
        the log (its time, then a sequence number for entries of one time)."""
        return {
            "id": uuid.uuid4().hex,
            **audit_to_dict(audit),
            "at_us": Int64(to_micros(audit.at)),
            "seq": Int64(await self._next(_AUDIT_SEQUENCE)),
        }

    async def _find_one(self, where: Document) -> ChannelConnection | None:
        self._store._check_open()
        with translated_errors("get_connection"):
            found = await self._connections.find_one({**where, **_LIVE})
        return None if found is None else connection_from_dict(found)

    # ----------------------------------------------------------- opt-outs

    async def set_opt_out(
        self, tenant_id: str, connection_id: str, user_id: str, opted_out: bool, at: datetime
    ) -> bool:
        return await self._run(self._set_opt_out(tenant_id, connection_id, user_id, opted_out, at))

    async def _set_opt_out(
        self, tenant_id: str, connection_id: str, user_id: str, opted_out: bool, at: datetime
    ) -> bool:
        key = {"tenant_id": tenant_id, "connection_id": connection_id, "user_id": user_id}
        # The newer keyword wins: the filter matches only an older record (or
        # none: then the upsert inserts); a newer one makes the upsert collide
        # with the unique index, which is "not recorded".
        where = {**key, "at_us": {"$lte": Int64(to_micros(at))}}
        change = {"$set": {"opted_out": opted_out, "at_us": Int64(to_micros(at))}}
        with translated_errors("set_opt_out"):
            try:
                await self._opt_outs.update_one(where, change, upsert=True)
            except DuplicateKeyError:
                # A newer record, or a concurrent first insert: once more
                # without inserting decides.
                result = await self._opt_outs.update_one(where, change)
                return bool(result.matched_count)
        return True

    async def is_opted_out(self, tenant_id: str, connection_id: str, user_id: str) -> bool:
        self._store._check_open()
        with translated_errors("is_opted_out"):
            found = await self._opt_outs.find_one(
                {"tenant_id": tenant_id, "connection_id": connection_id, "user_id": user_id}
            )
        return bool(found is not None and found.get("opted_out"))

    # -------------------------------------------------------------- inbox

    async def put(self, delivery: WebhookDelivery) -> bool:
        return await self._run(self._put(delivery))

    async def _put(self, delivery: WebhookDelivery) -> bool:
        with translated_errors("put"):
            position = Int64(await self._next(_INBOX_POSITION))
            document = {
                **delivery_to_dict(delivery),
                "_id": position,
                "position": position,  # _id cannot be in a compound index on nx-27017
                "attempts": 0,
                "not_before_us": Int64(0),
                "unprocessed": True,
            }
            try:
                await self._inbox.insert_one(document)
            except DuplicateKeyError:
                return False  # (its position is never used: positions only order)
        return True

    async def claim(
        self, owner: str, *, now: datetime, limit: int, lease_seconds: float
    ) -> Sequence[WebhookDelivery]:
        return await self._run(
            self._claim(owner, to_micros(now), positive_limit(limit), lease_seconds)
        )

    async def _claim(
        self, owner: str, now: int, limit: int, lease_seconds: float
    ) -> list[WebhookDelivery]:
        claimable = all_of(
            {"unprocessed": True, "not_before_us": {"$lte": now}},
            {
                "$or": [
                    {"lease_owner": None},
                    {"lease_owner": owner},
                    {"lease_until_us": {"$lte": now}},
                ]
            },
        )
        lease = {
            "lease_owner": owner,
            "lease_until_us": Int64(now + seconds_to_micros(lease_seconds)),
        }
        claimed: list[WebhookDelivery] = []
        after = 0
        with translated_errors("claim"):
            while len(claimed) < limit:
                # Past the last one taken: the caller's own leases are
                # claimable, and would be taken again.
                found = await self._inbox.find_one_and_update(
                    all_of(claimable, {"position": {"$gt": after}}),
                    {"$set": lease, "$inc": {"attempts": 1}},
                    sort=[("position", 1)],
                    return_document=ReturnDocument.AFTER,
                )
                if found is None:
                    break
                after = int(found["position"])
                claimed.append(delivery_from_dict(found))
        return claimed

    async def finish(self, owner: str, position: int, *, now: datetime) -> None:
        await self._settle(owner, position, {"processed_us": Int64(to_micros(now))}, done=True)

    async def retry_later(
        self, owner: str, position: int, *, not_before: datetime, error: str
    ) -> None:
        changes = {"not_before_us": Int64(to_micros(not_before)), "error": stored_error(error)}
        await self._settle(owner, position, changes, done=False)

    async def dead_letter(self, owner: str, position: int, *, now: datetime, error: str) -> None:
        changes = {
            "processed_us": Int64(to_micros(now)),
            "error": stored_error(error),
            "dead": True,
        }
        await self._settle(owner, position, changes, done=True)

    async def _settle(self, owner: str, position: int, changes: Document, *, done: bool) -> None:
        # Only a delivery the caller holds (a worker whose lease passed to
        # another owner changes nothing: the new owner decides).
        update: Document = {"$set": {**changes, "lease_owner": None, "lease_until_us": Int64(0)}}
        if done:
            update["$unset"] = {"unprocessed": ""}
        where = {"_id": Int64(position), "unprocessed": True, "lease_owner": owner}

        async def settle() -> None:
            with translated_errors("settle"):
                await self._inbox.update_one(where, update)

        await self._run(settle())

    async def prune(self, *, processed_before: datetime, limit: int) -> int:
        return await self._run(self._prune(to_micros(processed_before), positive_limit(limit)))

    async def _prune(self, before: int, limit: int) -> int:
        processed = {"processed_us": {"$lt": Int64(before)}}
        with translated_errors("prune"):
            oldest = (
                await self._inbox.find(processed, {"_id": 1})
                .sort("processed_us", 1)
                .limit(limit)
                .to_list()
            )
            if not oldest:
                return 0
            deleted = await self._inbox.delete_many(
                {"_id": {"$in": [document["_id"] for document in oldest]}, **processed}
            )
        return deleted.deleted_count

    # ----------------------------------------------------------- plumbing

    async def _next(self, counter: str) -> int:
        """The next number of a counter document (made by its first use)."""
        for attempt in range(2):
            try:
                found = await self._counters.find_one_and_update(
                    {"_id": counter},
                    {"$inc": {"value": Int64(1)}},
                    upsert=True,
                    return_document=ReturnDocument.AFTER,
                )
            except DuplicateKeyError:
                if attempt:
                    raise
                continue  # two first uses raced to make it; it exists now
            assert found is not None  # upserted
            return int(found["value"])
        raise AssertionError("unreachable")

    async def _run(self, work: Coroutine[Any, Any, _T]) -> _T:
        # As the store's own writes: run to their end even when the caller
        # is cancelled, and waited for by close().
        try:
            self._store._check_open()
        except StoreUnavailable:
            work.close()  # never started
            raise
        return await self._store._run_to_end(work)

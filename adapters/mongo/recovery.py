"""Recovery of journalled writes (journal.py, whose steps are numbered
here), and what readers may see meanwhile.

When a writer dies part-way (a crash, or MongoDB going away):
- after step 4 nothing is lost: step 5 is idempotent and is run by whoever
  meets the unfinished change: the next write of the conversation (before
  it may take the lease), `get_record` (so a retry finds its record), and
  every `claim_outbox`, which first finishes all unfinished changes, so the
  relay publishes every event of every committed change.
- before step 4 the change was never visible. The next writer takes its
  lease over: at once if it holds a newer lock (a higher fencing token),
  else once the lease has run out (after `lease`). A write is abandoned
  when its conversation's lease and journal no longer name it, since its
  commit is conditional on the lease. Its positions are released by the
  writer taking its lease over, or else declared void by the next
  `claim_outbox` or event-log read once its lease is over (revoking a
  lease that ran out but was not taken over, which fences the writer).
  Its reservations are deleted by whoever needs their keys. Safety never
  rests on clocks: a writer slower than its lease, or one whose clock is
  off, loses its lease and gets VersionConflict, nothing written.
- sequence numbers have no gap: a committed `last_sequence` covers exactly
  the messages reserved, and kept, by the write that committed it.

Here: rolling a committed change forward (its step 5), settling the
positions and leases dead writers left, telling whether a write can still
commit, and the visibility rule readers follow while writes are under way
(a message is visible at or below its conversation's committed
`last_sequence`; the event log up to its settled end).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from typing import Any

from pymongo.errors import BulkWriteError, DuplicateKeyError

from adapters.mongo.documents import CONVERSATIONS, MESSAGES, OUTBOX, RECORDS, Keys
from adapters.mongo.errors import is_duplicate_key
from adapters.mongo.positions import PositionRegistry
from adapters.mongo.schema import Collection, Database
from adapters.storage.times import now_micros
from chat_service.domain.serialization import Document


class Recovery:
    """Finishes and settles what journalled writes leave behind."""

    def __init__(self, database: Database, *, keys: Keys, positions: PositionRegistry) -> None:
        self._keys = keys
        self._conversations: Collection = database[CONVERSATIONS]
        self._messages: Collection = database[MESSAGES]
        self._records: Collection = database[RECORDS]
        self._outbox: Collection = database[OUTBOX]
        self._positions = positions

    # ------------------------------------------------------------ readers

    async def visible_bound(self, tenant_id: str, conversation_id: str) -> int | None:
        """The highest sequence readers may see in the conversation, None when
        the conversation does not exist (for this tenant)."""
        found = await self._conversations.find_one(
            {"_id": conversation_id, "tenant_id": tenant_id, "version": {"$gt": 0}},
            {"last_sequence": 1},
        )
        return None if found is None else int(found.get("last_sequence", 0))

    async def is_visible(self, message: Mapping[str, Any]) -> bool:
        if "_write" not in message:
            return True
        bound = await self.visible_bound(message["tenant_id"], message["conversation_id"])
        return bound is not None and int(message["sequence"]) <= bound

    async def record_in_flight(self, tenant_id: str, message_id: str) -> Document | None:
        """The record of a committed change not rolled forward yet: finishes the
        change of the message's conversation, then reads the record."""
        message = await self._messages.find_one(
            self._keys.where(tenant_id, message_id), {"conversation_id": 1}
        )
        if message is None:
            return None
        unfinished = await self._conversations.find_one(
            {"_id": message["conversation_id"], "_pending.token": {"$exists": True}}, {"_id": 1}
        )
        if unfinished is None:
            return None
        await self.finish(message["conversation_id"])
        return await self._records.find_one(self._keys.where(tenant_id, message_id))

    async def settled_through(self) -> int:
        """The event log's readable end: every position up to it is in the
        outbox or void. Settles what dead writers left in flight first."""
        counter = await self._positions.read(majority=True)
        if await self._settle_abandoned(counter.in_flight):
            counter = await self._positions.read(majority=True)
        return counter.settled_through

    # ----------------------------------------------------------- recovery

    async def finish(self, conversation_id: str) -> None:
        """Rolls forward the conversation's committed change, if one is unfinished."""
        await self.roll_forward(conversation_id, None)

    async def finish_unfinished(self, limit: int) -> int:
        """Rolls forward up to `limit` unfinished changes (the sparse index
        holds only those), settles positions left by dead writers, and
        returns the event log's readable end (settled_through)."""
        unfinished = self._conversations.find(
            {"_pending.token": {"$exists": True}}, {"_id": 1}
        ).limit(limit)
        for found in await unfinished.to_list():
            await self.finish(found["_id"])
        return await self.settled_through()

    async def _settle_abandoned(self, in_flight: Mapping[str, Mapping[str, Any]]) -> bool:
        """Settles the entries whose lease is over: their writes are finished
        if they committed, else fenced and their positions declared void.
        Returns whether there were any."""
        now = now_micros()
        expired = {token: entry for token, entry in in_flight.items() if entry["until"] <= now}
        for token, entry in expired.items():
            if "message_key" in entry:
                await self._settle_delivery(entry["message_key"], token)
            elif await self.is_abandoned(entry["conversation_id"], token):
                await self._positions.release(token)
            else:
                await self.finish(entry["conversation_id"])
        return bool(expired)

    async def _settle_delivery(self, message_key: object, token: str) -> None:
        # One conditional update decides: either the writer's update is in
        # (finish it), or from now on it can never be (void).
        voided = await self._messages.update_one(
            {"_id": message_key, f"_events.{token}": {"$exists": False}},
            {"$set": {f"_void.{token}": True}},
        )
        if voided.matched_count == 1:
            await self._positions.release(token)
        else:
            await self.finish_delivery(message_key, token)

    async def is_abandoned(self, conversation_id: str, writer: str) -> bool:
        """Whether the write `writer` of this conversation can never commit;
        revokes its lease if that ran out (so that it cannot)."""
        for _ in range(2):
            current = await self._conversations.find_one(
                # Whole subdocuments: nx-27017 flattens dotted projections.
                {"_id": conversation_id},
                {"_lease": 1, "_pending": 1},
            )
            if current is None:
                return True  # a creation that gave up its placeholder
            if current.get("_pending", {}).get("token") == writer:
                return False  # committed; being rolled forward
            lease = current.get("_lease")
            if lease is None or lease.get("token") != writer:
                return True  # its writer lost the lease, so it can never commit
            if lease["until"] > now_micros():
                return False  # its writer may still be at work
            revoked = await self._conversations.update_one(
                {"_id": conversation_id, "_lease.token": writer}, {"$unset": {"_lease": ""}}
            )
            if revoked.matched_count == 1:
                return True
        return False

    async def roll_forward(self, conversation_id: str, pending: Document | None) -> None:
        """Step 5 of the conversation's committed change, `pending` its journal
        entry (None: read it; nothing to do without one). Idempotent."""
        if pending is None:
            found = await self._conversations.find_one({"_id": conversation_id}, {"_pending": 1})
            pending = None if found is None else found.get("_pending")
            if not pending:
                return
        token = pending["token"]
        reserved = _reserved_by(conversation_id, pending.get("messages"))
        if reserved is not None:
            await self._messages.update_many(
                {**reserved, "_write": token}, {"$unset": {"_write": ""}}
            )
        events = pending.get("events", [])
        if events:
            await _insert_missing(self._outbox, events)
            await self._positions.release(token)
        record = pending.get("record")
        if record is not None:
            await self._save_record_unless_newer(record)
        await self._conversations.update_one(
            {"_id": conversation_id, "_pending.token": token}, {"$unset": {"_pending": ""}}
        )

    async def _save_record_unless_newer(self, record: Document) -> None:
        # No match means this write's record, or a newer one, is saved already:
        # the upsert then collides with it on a unique key, and that is fine.
        with contextlib.suppress(DuplicateKeyError):
            await self._records.update_one(
                {
                    **self._keys.where(record["tenant_id"], record["message_id"]),
                    "version": {"$lt": record["version"]},
                },
                {"$set": record},
                upsert=True,
            )

    async def finish_delivery(self, message_key: object, token: str) -> None:
        """The rest of a delivery update journalled on its message: the event
        into the outbox, the position released, the entry removed. Idempotent."""
        found = await self._messages.find_one({"_id": message_key}, {"_events": 1})
        event = None if found is None else found.get("_events", {}).get(token)
        if event is not None:
            await _insert_missing(self._outbox, [event])
        await self._positions.release(token)
        await self._messages.update_one({"_id": message_key}, {"$unset": {f"_events.{token}": ""}})


async def _insert_missing(collection: Collection, documents: Iterable[Document]) -> None:
    """Inserts the documents whose _id is not there yet."""
    documents = [dict(document) for document in documents]
    if not documents:
        return
    try:
        await collection.insert_many(documents, ordered=False)
    except BulkWriteError as error:
        if not is_duplicate_key(error):
            raise


def _reserved_by(conversation_id: str, message_keys: list[str] | None) -> Document | None:
    """Filter: the messages a committed change reserved, by `_id` (None when
    it reserved none). A change journalled by an earlier version, which did
    not list them, is looked up by its conversation."""
    if message_keys is None:
        return {"conversation_id": conversation_id}
    return {"_id": {"$in": message_keys}} if message_keys else None

"""The outbox as the relay and the event log's readers use it: claims,
publication marks, reads by position, retention.

Everything here reads the log at read concern majority (store.py, on
durability) and, with journalled writes, never past its settled end
(positions.py): a position still in flight may yet be written, so neither
a reader nor a claim may pass it. The rules of the head (what a claim or
a pruning may take) are shared with SQLite (storage/outbox.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from bson.int64 import Int64
from pymongo.read_concern import ReadConcern

from adapters.mongo.documents import COUNTERS, OUTBOX, OUTBOX_PRUNED, epoch_micros, outbox_entry
from adapters.mongo.errors import translated_errors
from adapters.mongo.filters import all_of
from adapters.mongo.recovery import Recovery
from adapters.mongo.schema import Collection, Database
from adapters.storage.changes import positive_limit
from adapters.storage.outbox import (
    HeadRow,
    Lease,
    claimable_count,
    prune_reach,
    refuse_pruned,
)
from adapters.storage.times import now_micros, seconds_to_micros, to_micros
from chat_service.domain.events import OutboxEntry
from chat_service.domain.serialization import Document

_MAJORITY = ReadConcern("majority")


class EventLog:
    """The store's outbox operations."""

    def __init__(self, database: Database, *, recovery: Recovery | None) -> None:
        # The event log (what the relay publishes, what watches resume from)
        # is read at majority: nothing a failover could roll back.
        self._outbox: Collection = database[OUTBOX].with_options(read_concern=_MAJORITY)
        self._own_outbox_writes: Collection = database[OUTBOX]
        self._counters: Collection = database[COUNTERS].with_options(read_concern=_MAJORITY)
        # Journalled writes only: finishes their changes, settles the log's end.
        self._recovery = recovery

    async def claim(self, owner: str, *, limit: int, lease_seconds: float) -> Sequence[OutboxEntry]:
        limit = positive_limit(limit)
        with translated_errors("claim_outbox"):
            unpublished: Document = {"unpublished": True}
            if self._recovery is not None:
                # Events of changes committed but not rolled forward are
                # written first, so that none is ever passed over for good.
                # And no further than the settled end, as read_events: a
                # write still holding a lower position (a slow commit, a
                # delivery update, which takes no conversation lock) would
                # otherwise have its events published after later ones.
                settled = await self._recovery.finish_unfinished(limit)
                unpublished["position"] = {"$lte": settled}
            now = now_micros()
            oldest = await (
                self._outbox.find(unpublished, {"_id": 1, "claimed_by": 1, "claimed_until": 1})
                .sort("position", 1)
                .limit(limit)
                .to_list()
            )
            leases = (Lease(d.get("claimed_by"), d.get("claimed_until", 0)) for d in oldest)
            run: list[int] = [d["_id"] for d in oldest[: claimable_count(leases, owner, now)]]
            if not run:
                return []
            claimed = await self._lease(run, owner, now, now + seconds_to_micros(lease_seconds))
        return [outbox_entry(document) for document in claimed]

    async def _lease(self, run: list[int], owner: str, now: int, until: int) -> list[Document]:
        """Leases the rows of `run` (the claimable head) to `owner`; returns
        those it got, a run from the head too."""
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
            {"$set": {"claimed_by": owner, "claimed_until": until, "claim": claim}},
        )
        # Which rows this claim got: its own write, read where it was made
        # (the rows' events were read at majority before).
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
        return claimed

    async def mark_published(self, owner: str, positions: Sequence[int]) -> None:
        # Only rows this owner holds: once its lease has passed to another
        # owner, that owner publishes (again) and marks; delivery is at least once.
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

    async def read(
        self, *, after_position: int, limit: int, tenant_id: str | None = None
    ) -> Sequence[OutboxEntry]:
        limit = positive_limit(limit)
        with translated_errors("read_events"):
            position: Document = {"$gt": after_position}
            if self._recovery is not None:
                # Journalled writes: not past a position still in flight.
                position["$lte"] = await self._recovery.settled_through()
            if tenant_id is None:
                found = self._outbox.find({"_id": position}).sort("_id", 1)
            else:
                where = {"event.tenant_id": tenant_id, "position": position}
                found = self._outbox.find(where).sort("position", 1)
            entries = await found.limit(limit).to_list()
            # After the rows: pruning records its reach before it deletes.
            pruned = await self._pruned_through()
        refuse_pruned(after_position, pruned)
        return [outbox_entry(document) for document in entries]

    async def last_position(self) -> int:
        with translated_errors("last_event_position"):
            return await self._last_position()

    async def prune(self, *, published_before: datetime, keep_last: int, limit: int) -> int:
        limit = positive_limit(limit)
        with translated_errors("prune_outbox"):
            last = await self._last_position()
            head: Document = {}
            if self._recovery is not None:
                # Not past a position in flight: its row may still come.
                head["_id"] = {"$lte": await self._recovery.settled_through()}
            fields = {"_id": 1, "unpublished": 1, "published_at": 1, "published_us": 1}
            oldest = await self._outbox.find(head, fields).sort("_id", 1).limit(limit).to_list()
            through = prune_reach(
                (
                    HeadRow(int(d["_id"]), not d.get("unpublished"), _published_us(d))
                    for d in oldest
                ),
                published_before=to_micros(published_before),
                last_position=last,
                keep_last=keep_last,
            )
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

    async def _last_position(self) -> int:
        """The newest readable position, never below what pruning deleted."""
        where: Document = {}
        if self._recovery is not None:
            where["_id"] = {"$lte": await self._recovery.settled_through()}
        newest = await self._outbox.find(where, {"_id": 1}).sort("_id", -1).limit(1).to_list()
        return max(int(newest[0]["_id"]) if newest else 0, await self._pruned_through())

    async def _pruned_through(self) -> int:
        found = await self._counters.find_one({"_id": OUTBOX_PRUNED})
        return 0 if found is None else int(found["through"])


def _published_now() -> Document:
    # `published_us` is what retention compares (an integer compares the
    # same on every server; nx-27017 gives back a date set by an update as
    # a string); `published_at` is for people reading the collection.
    now = datetime.now(UTC)
    return {"published_at": now, "published_us": epoch_micros(now)}


def _published_us(document: Mapping[str, Any]) -> int | None:
    """When an outbox row was published; None when unknown (a row marked by an
    earlier version, whose date did not come back as a date): such a row is
    pruned by count only."""
    if "published_us" in document:
        return int(document["published_us"])
    at = document.get("published_at")
    return to_micros(at) if isinstance(at, datetime) else None

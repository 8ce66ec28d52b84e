"""Atomic conversation changes without transactions: the journalled write.

A standalone MongoDB (and nx-27017, which answers like one) has no
multi-document transactions, only atomic single-document writes. A change
(the conversation, its new messages, their outbox events, the idempotency
record) is then written in this order:

1. Lease. The conversation document is leased to this write
   (`_lease: {token, until, fence}`, `fence` being the write's fencing
   token when it has one): for a new conversation a placeholder
   `{version: 0}` is inserted; a stored one must still be at
   `expected_version`, admit the write's fencing token, hold no unfinished
   change, and have no live lease, unless that lease's fence is lower than
   this write's token. The pipeline writes a conversation only while
   holding its lock, whose tokens grow with every grant: a lease under an
   older grant belongs to a writer whose lock has passed on (its write was
   cut by an outage, or it stalled), so the new holder takes it over at
   once instead of waiting for it to run out. (A lease without a fence,
   or a write without a token, only ever waits it out.) A stale version
   or token is VersionConflict here, before anything is written.
2. Reserve. The messages are inserted, marked `_write: token`. Their unique
   indexes claim (tenant, message_id) and (conversation, sequence) for this
   write, so duplicates are found race-free; on DuplicateMessage the write
   deletes its reservations and gives the lease back. A reserved message is
   invisible: readers show a message only at or below its conversation's
   `last_sequence`, which only the commit moves. A message's `_id` is its
   natural key (documents.message_key), so the write knows the `_id`s of
   all it reserved.
3. Positions. The events' outbox positions are taken, listed as in flight
   (positions.py), which holds back readers of the event log at them.
4. Commit. One update of the conversation document, conditional on the
   lease still being this write's and the fence still admitting its token,
   sets the new state, removes the lease and journals the rest in it:
   `_pending: {token, message _ids, events with their positions, record}`.
   This single-document write is the commit point: before it readers see
   none of the change; after it they see the conversation and its messages,
   and the events and record are durable in `_pending`.
5. Roll forward. The markers come off the messages (found by `_id`, so
   that a write costs the same however long its conversation), the events
   go into the outbox (each with its position as `_id`, so a repeat is a
   no-op), the record is saved (unless a newer one is), the positions are
   released from in flight, and `_pending` is removed, conditional on its
   token.

Recovery, when a writer dies part-way (nothing is lost after step 4,
nothing was visible before it, and sequence numbers keep no gap), is in
recovery.py (step 5 with it), with the visibility rule readers follow
meanwhile.

Delivery status updates (and the requeue of a dead letter) are journalled
on the message document: the new status (with the platform's id for the
message, once sent) and its event (`_events.<token>`, positioned in
flight) in one conditional update, then the event into the outbox, then
the position released and the journal entry removed. A writer that died before its
update is fenced by `_void.<token>`, which its update's condition excludes.

A write that is fenced or loses a race gets VersionConflict or
DuplicateMessage with nothing visible written, as with transactions. What
the journal cannot give: the events and the record of a committed change
reach their collections a moment after the conversation (step 5), or after
a crash only once someone finishes the change (recovery.py).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta

from pymongo import ReturnDocument
from pymongo.errors import BulkWriteError, ConnectionFailure, DuplicateKeyError, PyMongoError

from adapters.mongo.documents import (
    CONVERSATIONS,
    COUNTERS,
    DELIVERY_LEASE,
    MESSAGES,
    EncodedChange,
    Keys,
    fence_admits,
    outbox_document,
)
from adapters.mongo.errors import first_failed_index, is_duplicate_key
from adapters.mongo.filters import all_of
from adapters.mongo.positions import PositionRegistry
from adapters.mongo.recovery import Recovery
from adapters.mongo.schema import Collection, Database
from adapters.storage.changes import already_exists
from adapters.storage.sent import sent_metadata_paths
from adapters.storage.times import now_micros
from chat_service.domain.enums import DeliveryStatus
from chat_service.domain.serialization import Document
from chat_service.ports import DuplicateMessage, StoreUnavailable, VersionConflict

log = logging.getLogger(__name__)

# Bounds the loops that step over other writers' leftovers; each round
# makes progress unless another writer keeps racing this one, which the
# conversation locks of the pipeline rule out in practice.
_ROUNDS = 4


class Journal:
    """The journalled write protocol over the store's collections. Its
    `recovery` finishes what writers leave, and is what readers consult."""

    def __init__(
        self, database: Database, *, keys: Keys, lease: timedelta, time_limit: float
    ) -> None:
        if lease <= timedelta(0):
            raise ValueError("the write lease must be positive")
        self._keys = keys
        self._conversations: Collection = database[CONVERSATIONS]
        self._messages: Collection = database[MESSAGES]
        self._positions = PositionRegistry(database[COUNTERS], time_limit=time_limit)
        self._lease_micros = lease // timedelta(microseconds=1)
        self.recovery = Recovery(database, keys=keys, positions=self._positions)

    # ------------------------------------------------------------- writes

    async def write(self, change: EncodedChange) -> None:
        token = _new_token()
        until = await self._take_lease(change, token)
        try:
            await self._reserve(change, token)
            positions = await self._take_positions(change, token, until)
            pending = await self._commit(change, token, positions)
        except ConnectionFailure:
            # MongoDB is out of reach: undoing would only wait for it again.
            # What is left is invisible, and settled by whoever meets it.
            raise
        except Exception:
            if not await self._abandon(change, token):
                raise
            # The commit applied after all; only its answer was lost.
            pending = None
        try:
            await self.recovery.roll_forward(change.conversation_id, pending)
        except PyMongoError as error:
            # Committed and durable: the next writer, a record lookup or the
            # outbox relay's next claim rolls it forward.
            log.warning(
                "change of %s committed, roll-forward deferred: %s", change.conversation_id, error
            )

    async def advance_delivery_status(
        self,
        tenant_id: str,
        message_id: str,
        status: DeliveryStatus,
        event: Document | None,
        *,
        platform_message_id: str = "",
        channel_data: Mapping[str, str | int | bool] | None = None,
    ) -> bool:
        recorded = sent_metadata_paths(platform_message_id, channel_data)
        moved = await self._move_status(
            tenant_id,
            message_id,
            status.value,
            status,
            event,
            recorded,
            DeliveryStatus.can_advance_to,
        )
        return moved is not None

    async def requeue_delivery(
        self, tenant_id: str, message_id: str, event: Document
    ) -> Document | None:
        return await self._move_status(
            tenant_id, message_id, "requeue", DeliveryStatus.PENDING, event, {}, _is_failed
        )

    async def _move_status(
        self,
        tenant_id: str,
        message_id: str,
        what: str,
        status: DeliveryStatus,
        event: Document | None,
        also: Document,
        allowed: Callable[[DeliveryStatus, DeliveryStatus], bool],
    ) -> Document | None:
        """Sets the message's delivery status to `status` (and the fields of
        `also`) if `allowed(current, status)`, with its event; the message
        document after it, or None when it did not move."""
        # A lost round means the status moved (forward, at most four times),
        # or this writer was slower than its lease: rounds are few.
        for _ in range(2 * _ROUNDS):
            found = await self._messages.find_one(
                self._keys.where(tenant_id, message_id),
                {
                    "tenant_id": 1,
                    "conversation_id": 1,
                    "sequence": 1,
                    "delivery_status": 1,
                    "_write": 1,
                },
            )
            if found is None or not await self.recovery.is_visible(found):
                return None
            current = DeliveryStatus(found["delivery_status"])
            if not allowed(current, status):
                return None
            key, token = found["_id"], _new_token()
            update: Document = {"delivery_status": status.value, **also}
            where: Document = {"_id": key, "delivery_status": current.value}
            if event is not None:
                until = now_micros() + self._lease_micros
                [position] = await self._positions.take(
                    1, token=token, until=until, owner={"message_key": key}
                )
                update[f"_events.{token}"] = outbox_document(position, event)
                where[f"_void.{token}"] = {"$exists": False}
            moved = await self._messages.find_one_and_update(
                where,
                # Any move ends the reply's delivery lease.
                {"$set": update, "$unset": {DELIVERY_LEASE: ""}},
                return_document=ReturnDocument.AFTER,
            )
            if moved is not None:
                if event is not None:
                    await self._finish_quietly(self.recovery.finish_delivery(key, token))
                return moved
            if event is not None:
                await self._positions.release(token)  # taken for nothing: void
        raise StoreUnavailable(f"delivery status of {message_id!r} ({what}): kept losing its lease")

    # -------------------------------------------------------------- steps

    async def _take_lease(self, change: EncodedChange, token: str) -> int:
        """Returns when the lease ends (wall-clock microseconds)."""
        conversation_id, tenant_id = change.conversation_id, change.tenant_id
        for _ in range(_ROUNDS):
            now = now_micros()
            until = now + self._lease_micros
            lease: Document = {"token": token, "until": until}
            if change.fencing_token is not None:
                lease["fence"] = change.fencing_token
            free = _lease_free(now, change.fencing_token)
            if change.expected_version == 0:
                if await self._insert_placeholder(change, lease):
                    return until
                # A placeholder whose creator died, or lost its lock, may be taken over.
                placeholder = {"_id": conversation_id, "tenant_id": tenant_id, "version": 0}
                if await self._lease_conversation(all_of(placeholder, free), lease):
                    return until
                raise already_exists(conversation_id)
            current_version = {
                "_id": conversation_id,
                "tenant_id": tenant_id,
                "version": change.expected_version,
                "_pending": {"$exists": False},
            }
            if await self._lease_conversation(
                all_of(current_version, free, fence_admits(change.fencing_token)), lease
            ):
                return until
            current = await self._conversations.find_one(
                {"_id": conversation_id, "tenant_id": tenant_id},
                {"version": 1, "_pending": 1, "_fence": 1},
            )
            if current is None or current.get("version") != change.expected_version:
                raise VersionConflict(
                    f"conversation {conversation_id!r} is not at version {change.expected_version}"
                )
            fence = current.get("_fence")
            if (
                change.fencing_token is not None
                and fence is not None
                and fence > change.fencing_token
            ):
                raise VersionConflict(
                    f"conversation {conversation_id!r} was written under a newer lock "
                    f"(fencing token {fence}) than {change.fencing_token}"
                )
            if "_pending" not in current:
                raise VersionConflict(
                    f"conversation {conversation_id!r} is being written by another writer"
                )
            # The change that made this version is still rolling forward.
            await self.recovery.finish(conversation_id)
        raise VersionConflict(f"conversation {conversation_id!r} kept changing")

    async def _lease_conversation(self, where: Document, lease: Document) -> bool:
        """Sets `lease` on the conversation if `where` matches it. A lease taken
        over belonged to a write that can now never commit (its commit is
        conditional on its lease): its positions are released at once, so
        that readers of the event log need not wait for its lease to end."""
        before = await self._conversations.find_one_and_update(
            where,
            {"$set": {"_lease": lease}},
            # The whole subdocument: nx-27017 flattens dotted projections.
            projection={"_lease": 1},
            return_document=ReturnDocument.BEFORE,
        )
        if before is None:
            return False
        overtaken = before.get("_lease")
        if overtaken is not None:
            await self._positions.release(overtaken["token"])
        return True

    async def _insert_placeholder(self, change: EncodedChange, lease: Document) -> bool:
        placeholder = {
            "_id": change.conversation_id,
            "tenant_id": change.tenant_id,
            "version": 0,
            "_lease": lease,
        }
        try:
            await self._conversations.insert_one(placeholder)
        except DuplicateKeyError:
            return False
        return True

    async def _reserve(self, change: EncodedChange, token: str) -> None:
        documents = [{**message, "_write": token} for message in change.messages]
        message_ids = list(change.message_ids)
        for _ in range(_ROUNDS + len(documents)):
            if not documents:
                return
            try:
                await self._messages.insert_many(documents, ordered=True)
                return
            except BulkWriteError as error:
                if not is_duplicate_key(error):
                    raise
                # Those before the failed one are in; retry from it once
                # whatever blocked it turns out to be abandoned.
                failed = first_failed_index(error)
                documents, message_ids = documents[failed:], message_ids[failed:]
                if not await self._clear_abandoned(documents[0], token):
                    raise DuplicateMessage(message_ids[0]) from error
        raise DuplicateMessage(message_ids[0])

    async def _clear_abandoned(self, message: Document, token: str) -> bool:
        """Deletes the abandoned reservations holding this message's keys.
        False when a key is genuinely taken: by a committed message, by a
        write still at work, or by this very change."""
        # One lookup per unique key (an $or of the two would be one scan on
        # nx-27017); by message id also finds a clash on `_id`, the same key.
        projection = {"conversation_id": 1, "_write": 1}
        found = [
            await self._messages.find_one(
                self._keys.where(message["tenant_id"], message["message_id"]), projection
            ),
            await self._messages.find_one(
                {"conversation_id": message["conversation_id"], "sequence": message["sequence"]},
                projection,
            ),
        ]
        blockers = list({b["_id"]: b for b in found if b is not None}.values())
        for blocker in blockers:
            writer = blocker.get("_write")
            if writer is None or writer == token:
                return False
            if not await self.recovery.is_abandoned(blocker["conversation_id"], writer):
                return False
        for blocker in blockers:
            await self._messages.delete_one({"_id": blocker["_id"], "_write": blocker["_write"]})
        return True  # (also when the blockers vanished meanwhile: try again)

    async def _take_positions(self, change: EncodedChange, token: str, until: int) -> range:
        if not change.events:
            return range(0)
        return await self._positions.take(
            len(change.events),
            token=token,
            until=until,
            owner={"conversation_id": change.conversation_id},
        )

    async def _commit(self, change: EncodedChange, token: str, positions: range) -> Document:
        pending: Document = {
            "token": token,
            "messages": list(change.message_keys),
            "events": [
                outbox_document(position, event)
                for position, event in zip(positions, change.events, strict=True)
            ],
        }
        if change.record is not None:
            pending["record"] = change.record
        # Conditional on the lease, which a writer under a newer lock takes
        # over, and on the fence too: a writer whose lock has passed on never
        # commits, whichever step it had reached when the next holder came.
        update = change.conversation_update
        committed = await self._conversations.update_one(
            all_of(
                {
                    "_id": change.conversation_id,
                    "tenant_id": change.tenant_id,
                    "_lease.token": token,
                },
                fence_admits(change.fencing_token),
            ),
            {
                **update,
                "$set": {**update["$set"], "_pending": pending},
                "$unset": {**update.get("$unset", {}), "_lease": ""},
            },
        )
        if committed.matched_count != 1:
            raise VersionConflict(
                f"conversation {change.conversation_id!r}: the write lost its lease "
                "(it outlived it, or a writer under a newer lock took over)"
            )
        return pending

    async def _abandon(self, change: EncodedChange, token: str) -> bool:
        """Undoes a write that failed at or before its commit; returns True when
        the commit turns out to have applied (its answer was lost)."""
        conversation_id = change.conversation_id
        try:
            # First the lease: once it is gone, this write can never commit,
            # so what follows cannot race our own late commit.
            if change.expected_version == 0:
                await self._conversations.delete_one(
                    {"_id": conversation_id, "version": 0, "_lease.token": token}
                )
            else:
                await self._conversations.update_one(
                    {"_id": conversation_id, "_lease.token": token}, {"$unset": {"_lease": ""}}
                )
            current = await self._conversations.find_one({"_id": conversation_id}, {"_pending": 1})
            if current is not None and current.get("_pending", {}).get("token") == token:
                return True
            if change.messages:
                await self._messages.delete_many(
                    {"_id": {"$in": list(change.message_keys)}, "_write": token}
                )
            if change.events:  # positions taken or not: releasing is harmless
                await self._positions.release(token)
        except PyMongoError as error:
            # What is left is invisible, and settled by whoever meets it.
            log.warning("could not undo a failed write of %s: %s", conversation_id, error)
        return False

    @staticmethod
    async def _finish_quietly(finishing: Awaitable[None]) -> None:
        try:
            await finishing
        except PyMongoError as error:
            # Journalled on the message: settled once its lease is over.
            log.warning("delivery update journalled, outbox insert deferred: %s", error)


def _lease_free(now: int, fencing_token: int | None) -> Document:
    """Filter: the conversation's write lease may be taken. It is when there
    is none, when it ran out, or (for a write with a fencing token) when it
    was taken under an older lock; a lease without a fence (its writer held
    no lock) only by running out."""
    free: list[Document] = [{"_lease": {"$exists": False}}, {"_lease.until": {"$lte": now}}]
    if fencing_token is not None:
        free.append({"_lease.fence": {"$lt": fencing_token}})
    return {"$or": free}


def _is_failed(current: DeliveryStatus, _target: DeliveryStatus) -> bool:
    # The one backward move: a dead letter requeued by an operator.
    return current is DeliveryStatus.FAILED


def _new_token() -> str:
    # A letter first: tokens are also field names (`_events.<token>`).
    return f"w{uuid.uuid4().hex}"

"""Multi-document transactions: whether the deployment has them, the retry
loop around one, and the store's writes made of them.

A change is one transaction: the conversation (replaced if still at the
expected version and admitting the fencing token), its messages (their
unique indexes refuse duplicates), the record, then its events, numbered
from the outbox counter in the same transaction. Any refusal aborts it
whole. The counter comes last to be held briefly (see store.py on why it
is incremented inside the transaction at all).

The loop is the driver's `with_transaction` (the transactions spec's
convenient API) with two changes: it gives up at the caller's time limit
rather than after the spec's 120 seconds, and it does not retry when the
server cannot be reached at all, so that an outage surfaces at once as
StoreUnavailable (the caller retries later) instead of holding the request
until its deadline.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from pymongo import AsyncMongoClient, ReturnDocument
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.errors import BulkWriteError, ConnectionFailure, DuplicateKeyError, PyMongoError

from adapters.mongo.documents import (
    CONVERSATIONS,
    COUNTERS,
    DELIVERY_LEASE,
    MESSAGES,
    OUTBOX,
    OUTBOX_POSITION,
    RECORDS,
    EncodedChange,
    Keys,
    fence_admits,
    outbox_document,
)
from adapters.mongo.errors import first_failed_index, is_duplicate_key
from adapters.mongo.filters import all_of
from adapters.mongo.schema import Collection, Database
from adapters.storage.changes import already_exists, stale_version
from adapters.storage.sent import sent_metadata_paths
from chat_service.domain.enums import DeliveryStatus
from chat_service.domain.serialization import Document
from chat_service.ports import DuplicateMessage

TransactionBody = Callable[[AsyncClientSession], Awaitable[None]]
Client = AsyncMongoClient[dict[str, Any]]

_BACKOFF_INITIAL = 0.005
_BACKOFF_MAX = 0.5


def supports_transactions(hello: Mapping[str, Any]) -> bool:
    """From the server's `hello`: replica-set members (they name their set)
    and mongos routers run multi-document transactions; a standalone mongod
    does not. nx-27017, the test server, answers like a standalone."""
    return "setName" in hello or hello.get("msg") == "isdbgrid"


class TransactionalWrites:
    """The store's writes, each one transaction."""

    def __init__(
        self, client: Client, database: Database, *, keys: Keys, time_limit: float
    ) -> None:
        self._client = client
        self._keys = keys
        self._conversations: Collection = database[CONVERSATIONS]
        self._messages: Collection = database[MESSAGES]
        self._records: Collection = database[RECORDS]
        self._outbox: Collection = database[OUTBOX]
        self._counters: Collection = database[COUNTERS]
        self._time_limit = time_limit

    async def write(self, change: EncodedChange) -> None:
        async def body(session: AsyncClientSession) -> None:
            await self._replace_conversation(change, session)
            if change.messages:
                try:
                    await self._messages.insert_many(
                        [dict(message) for message in change.messages], session=session
                    )
                except BulkWriteError as error:
                    if is_duplicate_key(error):
                        failed = change.message_ids[first_failed_index(error)]
                        raise DuplicateMessage(failed) from error
                    raise
            if change.record is not None:
                record = change.record
                where = self._keys.where(record["tenant_id"], record["message_id"])
                # The replacement repeats the filter's keys: nx-27017 does not
                # take an upserted _id from the filter (MongoDB does).
                await self._records.replace_one(
                    where, {**where, **record}, upsert=True, session=session
                )
            await self._append_events(change.events, session)  # last: see the docstring

        await run_in_transaction(self._client, body, time_limit=self._time_limit)

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
        moved = await self._move_status(
            tenant_id,
            message_id,
            status,
            event,
            sent_metadata_paths(platform_message_id, channel_data),
            DeliveryStatus.can_advance_to,
        )
        return moved is not None

    async def requeue_delivery(
        self, tenant_id: str, message_id: str, event: Document
    ) -> Document | None:
        return await self._move_status(
            tenant_id,
            message_id,
            DeliveryStatus.PENDING,
            event,
            {},
            lambda current, _target: current is DeliveryStatus.FAILED,
        )

    async def _move_status(
        self,
        tenant_id: str,
        message_id: str,
        status: DeliveryStatus,
        event: Document | None,
        also: Document,
        allowed: Callable[[DeliveryStatus, DeliveryStatus], bool],
    ) -> Document | None:
        """Sets the delivery status to `status` (and the fields of `also`) if
        `allowed(current, status)`, with its event, in one transaction; the
        message document after it, or None when it did not move."""
        moved: Document | None = None

        async def body(session: AsyncClientSession) -> None:
            nonlocal moved
            moved = None  # a retried transaction starts over
            # The update is conditional on the status read, so that it only
            # moves as allowed even where transactions do not conflict (each
            # lost round means the status moved forward: rounds are few).
            for _ in range(len(DeliveryStatus)):
                found = await self._messages.find_one(
                    self._keys.where(tenant_id, message_id), {"delivery_status": 1}, session=session
                )
                if found is None:
                    return
                current = DeliveryStatus(found["delivery_status"])
                if not allowed(current, status):
                    return
                after = await self._messages.find_one_and_update(
                    {"_id": found["_id"], "delivery_status": current.value},
                    # Any move ends the reply's delivery lease.
                    {
                        "$set": {"delivery_status": status.value, **also},
                        "$unset": {DELIVERY_LEASE: ""},
                    },
                    return_document=ReturnDocument.AFTER,
                    session=session,
                )
                if after is not None:
                    await self._append_events(() if event is None else (event,), session)
                    moved = after
                    return

        await run_in_transaction(self._client, body, time_limit=self._time_limit)
        return moved

    async def _replace_conversation(
        self, change: EncodedChange, session: AsyncClientSession
    ) -> None:
        conversation_id = change.conversation_id
        if change.expected_version == 0:
            try:
                await self._conversations.insert_one(dict(change.conversation), session=session)
            except DuplicateKeyError as error:
                raise already_exists(conversation_id) from error
            return
        where = {
            "_id": conversation_id,
            "tenant_id": change.tenant_id,
            "version": change.expected_version,
        }
        replaced = await self._conversations.update_one(
            all_of(where, fence_admits(change.fencing_token)),
            change.conversation_update,
            session=session,
        )
        if replaced.matched_count != 1:
            raise stale_version(conversation_id, change.expected_version, change.fencing_token)

    async def _append_events(self, events: Sequence[Document], session: AsyncClientSession) -> None:
        """Numbers the events from the counter and appends them to the outbox."""
        if not events:
            return
        counter = await self._counters.find_one_and_update(
            {"_id": OUTBOX_POSITION},
            {"$inc": {"value": len(events)}},
            return_document=ReturnDocument.AFTER,
            session=session,
        )
        if counter is None:  # made at open; only an operator can have removed it
            raise RuntimeError("the outbox position counter is missing; reopen the store")
        first = int(counter["value"]) - len(events) + 1
        await self._outbox.insert_many(
            [outbox_document(first + i, event) for i, event in enumerate(events)],
            session=session,
        )


async def run_in_transaction(client: Client, body: TransactionBody, *, time_limit: float) -> None:
    """Runs `body` in a transaction and commits it, again from the start on a
    transient error (a write conflict with another transaction), until
    `time_limit` seconds have passed. Errors raised by `body` abort it."""
    started = time.monotonic()
    attempt = 0
    async with client.start_session() as session:
        while True:
            attempt += 1
            await session.start_transaction()
            try:
                await body(session)
            except BaseException as error:
                if session.in_transaction:
                    # (Errors of the abort itself are ignored, as the spec says.)
                    await session.abort_transaction()
                if _retryable(error) and await _backed_off(started, time_limit, attempt):
                    continue
                raise
            try:
                await _commit(session, started, time_limit)
            except PyMongoError as error:
                if error.has_error_label("TransientTransactionError") and await _backed_off(
                    started, time_limit, attempt
                ):
                    continue
                raise
            return


async def _commit(session: AsyncClientSession, started: float, time_limit: float) -> None:
    attempt = 0
    while True:
        attempt += 1
        try:
            await session.commit_transaction()
            return
        except PyMongoError as error:
            # The commit may or may not have applied; committing again is
            # safe (the server answers for the same transaction). Not when
            # the server cannot be reached: that is for the caller to retry.
            if (
                error.has_error_label("UnknownTransactionCommitResult")
                and not isinstance(error, ConnectionFailure)
                and await _backed_off(started, time_limit, attempt)
            ):
                continue
            raise


def _retryable(error: BaseException) -> bool:
    return (
        isinstance(error, PyMongoError)
        and error.has_error_label("TransientTransactionError")
        and not isinstance(error, ConnectionFailure)
    )


async def _backed_off(started: float, time_limit: float, attempt: int) -> bool:
    """Sleeps a jittered, growing delay if that still ends within the time
    limit; returns whether it did (whether to try again)."""
    delay = random.random() * min(_BACKOFF_INITIAL * 1.5**attempt, _BACKOFF_MAX)  # noqa: S311
    if time.monotonic() + delay - started >= time_limit:
        return False
    await asyncio.sleep(delay)
    return True

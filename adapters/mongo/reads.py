"""Conversations, messages and idempotency records as readers may see
them: with journalled writes (no transactions), only what has committed
(recovery.py says what is visible); with transactions, all that is stored.
Also the two lookups of platform delivery: a message by the platform's id
for it, and the replies still PENDING (of every tenant).

ListConversations pages by keyset, (created_us, conversation_id); its text
search finds, a batch of candidate conversations at a time, those with a
message whose search form holds the query's (storage/search.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Mapping, Sequence
from datetime import datetime
from typing import Any

from pymongo import UpdateOne
from pymongo.errors import PyMongoError

from adapters.mongo.documents import (
    CONVERSATIONS,
    MESSAGES,
    RECORDS,
    Keys,
    conversation_from_document,
    delivery_free,
    epoch_micros,
    message_from_document,
    record_from_document,
)
from adapters.mongo.errors import translated_errors
from adapters.mongo.filters import all_of, literal_pattern
from adapters.mongo.recovery import Recovery
from adapters.mongo.schema import Collection, Database
from adapters.storage.changes import positive_limit
from adapters.storage.search import query_search_text
from adapters.storage.times import to_micros
from chat_service.domain.enums import Channel, MessageRole
from chat_service.domain.model import Conversation, IdempotencyRecord, Message
from chat_service.domain.serialization import Document, parse_datetime
from chat_service.ports import ConversationCursor, ConversationQuery, DeliveryClaimant

# A page's end: (created_us, conversation_id) of its last conversation.
Keyset = tuple[int, str]

# Conversations examined per round of a search (see _search).
_SEARCH_BATCH = 100


class Reads:
    """The store's reads of conversations, messages and records."""

    def __init__(
        self,
        database: Database,
        *,
        keys: Keys,
        recovery: Recovery | None,
        iter_batch_size: int,
    ) -> None:
        self._conversations: Collection = database[CONVERSATIONS]
        self._messages: Collection = database[MESSAGES]
        self._records: Collection = database[RECORDS]
        self._keys = keys
        # Journalled writes only: what they have committed.
        self._recovery = recovery
        self._iter_batch_size = iter_batch_size
        # Whether _date_pending has run (it is needed once per process).
        self._pending_dated = False

    async def get_conversation(self, tenant_id: str, conversation_id: str) -> Conversation | None:
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
        limit = positive_limit(limit)
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
        limit = positive_limit(limit)
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
    ) -> AsyncGenerator[Message, None]:
        # One cursor, fetched a batch at a time (batch_size), so memory holds
        # one batch however long the conversation.
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
        with translated_errors("get_message"):
            found = await self._messages.find_one(self._keys.where(tenant_id, message_id))
            if found is None or (
                self._recovery is not None and not await self._recovery.is_visible(found)
            ):
                return None
        return message_from_document(found)

    async def get_record(self, tenant_id: str, message_id: str) -> IdempotencyRecord | None:
        with translated_errors("get_record"):
            found = await self._records.find_one(self._keys.where(tenant_id, message_id))
            if found is None and self._recovery is not None:
                found = await self._recovery.record_in_flight(tenant_id, message_id)
        return None if found is None else record_from_document(found)

    async def find_by_platform_id(
        self, tenant_id: str, channel: Channel, platform_message_id: str
    ) -> Message | None:
        if not platform_message_id:
            return None  # never recorded: an empty id names no message
        where = {
            "tenant_id": tenant_id,
            "channel": channel.value,
            "channel_metadata.platform_message_id": platform_message_id,
            "role": {"$ne": MessageRole.USER.value},
        }
        with translated_errors("find_by_platform_id"):
            found = await self._messages.find_one(where)
            if found is None or (
                self._recovery is not None and not await self._recovery.is_visible(found)
            ):
                return None
        return message_from_document(found)

    async def list_pending_deliveries(
        self,
        *,
        limit: int,
        after: tuple[datetime, str] | None,
        claimable_by: DeliveryClaimant | None = None,
    ) -> Sequence[Message]:
        limit = positive_limit(limit)
        keyset = None if after is None else (int(epoch_micros(after[0])), after[1])
        found: list[Message] = []
        with translated_errors("list_pending_deliveries"):
            if keyset is None and not self._pending_dated:
                await self._date_pending()
                self._pending_dated = True
            # Journalled writes: a message reserved by a write that has not
            # committed is not there yet, so a batch may come up short of
            # visible ones, and the next is read.
            while True:
                batch = (
                    await self._messages.find(_pending_filter(keyset, claimable_by))
                    .sort([("created_us", 1), ("message_id", 1)])
                    .limit(limit)
                    .to_list()
                )
                for document in batch:
                    if self._recovery is None or await self._recovery.is_visible(document):
                        found.append(message_from_document(document))
                        if len(found) == limit:
                            return found
                if len(batch) < limit:
                    return found
                last = batch[-1]
                keyset = (int(last["created_us"]), last["message_id"])

    async def _date_pending(self) -> None:
        """Gives `created_us` to the PENDING messages stored without it by
        versions before it (documents.message_document). Done by the first
        listing of the process (the delivery sweeps list every half minute),
        and not at open: it is needed here only, and these are few (open
        stays on `_id`s)."""
        lacking = {"delivery_status": "pending", "created_us": {"$exists": False}}
        while True:
            batch = await self._messages.find(lacking, {"created_at": 1}).limit(500).to_list()
            if not batch:
                return
            # Each update takes its message out of `lacking`, so the loop ends.
            await self._messages.bulk_write(
                [
                    UpdateOne(
                        {"_id": found["_id"], "created_us": {"$exists": False}},
                        {"$set": {"created_us": epoch_micros(parse_datetime(found["created_at"]))}},
                    )
                    for found in batch
                ],
                ordered=False,
            )

    async def _visible_through(self, tenant_id: str, conversation_id: str) -> int | None:
        """Journalled writes only: the last sequence readers may see (0 when the
        conversation does not exist). With transactions, None: no bound needed."""
        if self._recovery is None:
            return None
        bound = await self._recovery.visible_bound(tenant_id, conversation_id)
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
        # Both sides in their search form (storage/search.py); the text is
        # escaped, so it is matched as a plain substring whatever it holds.
        pattern = {"$regex": literal_pattern(query_search_text(query.search_query))}
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
        if self._recovery is None:
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


def _pending_filter(keyset: Keyset | None, claimable_by: DeliveryClaimant | None) -> Document:
    """Outbound messages still PENDING (the partial index `pending_deliveries`
    holds only PENDING ones), beyond `keyset`: (created_us, message_id); with
    `claimable_by`, only those whose delivery lease is free to it."""
    where: Document = {"delivery_status": "pending", "role": {"$ne": MessageRole.USER.value}}
    lease: Document = {}
    if claimable_by is not None:
        lease = delivery_free(claimable_by.owner, to_micros(claimable_by.now))
    if keyset is None:
        return all_of(where, lease) if lease else where
    at, message_id = keyset
    # As in _conversation_filter: the bound on created_us lets the index
    # seek, the $or settles the ties.
    where["created_us"] = {"$gte": at}
    return all_of(
        where, {"$or": [{"created_us": {"$gt": at}}, {"message_id": {"$gt": message_id}}]}, lease
    )


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

"""Domain objects <-> MongoDB documents.

A document is the shared codec's dict (chat_service.domain.serialization)
plus what MongoDB itself needs: a natural `_id` (messages and idempotency
records have one too, so that their hot lookups and the journal's clean-up
go by `_id`), the casefolded text the search filter matches, BSON dates for
the TTL indexes, and the one time queries filter and sort on, the creation
of a conversation or a message, as an integer (`created_us`). Times
otherwise stay the codec's ISO-8601 UTC strings, exact to the microsecond
(a BSON date keeps milliseconds, and the store gives back what it was
given), and are only ever read back, never compared: an integer compares
the same on every server, while nx-27017, the test server, compares
strings that look like dates as datetimes cut to the whole second.

Fields starting with `_` other than `_id` belong to the journalled write
protocol (journal.py), or are a PENDING reply's delivery lease
(`_delivery`); the decoders ignore them, as they ignore every key they do
not know.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bson.int64 import Int64

from adapters.storage.search import message_search_text
from adapters.storage.times import to_micros
from chat_service.domain.conversation_codec import (
    conversation_from_dict,
    conversation_to_dict,
    idempotency_record_from_dict,
    idempotency_record_to_dict,
    message_from_dict,
    message_to_dict,
)
from chat_service.domain.event_codec import event_from_dict, event_to_dict
from chat_service.domain.events import OutboxEntry
from chat_service.domain.model import Conversation, IdempotencyRecord, Message
from chat_service.domain.serialization import Document
from chat_service.ports import ConversationChange

CONVERSATIONS = "conversations"
MESSAGES = "messages"
RECORDS = "idempotency_records"
OUTBOX = "outbox"
COUNTERS = "counters"

# The counter document that numbers outbox events.
OUTBOX_POSITION = "outbox_position"
# The counter document saying how far retention deleted the event log:
# {_id: "outbox_pruned", through: <position>} (event_log.py, prune).
OUTBOX_PRUNED = "outbox_pruned"


_CONVERSATION_FIELDS = tuple(field.name for field in dataclasses.fields(Conversation))


def epoch_micros(moment: datetime) -> Int64:
    """storage.times.to_micros as a BSON 64-bit integer, whatever its size."""
    return Int64(to_micros(moment))


def conversation_fields(conversation: Conversation) -> Document:
    """The codec's dict plus `created_us`, the creation time that queries
    filter and page on (ListConversations)."""
    return {
        **conversation_to_dict(conversation),
        "created_us": epoch_micros(conversation.created_at),
    }


def conversation_document(conversation: Conversation, *, fencing_token: int | None) -> Document:
    """A new conversation's document; `_fence` is the highest lock fencing
    token that wrote it (ConversationChange.fencing_token)."""
    document = {"_id": conversation.conversation_id, **conversation_fields(conversation)}
    if fencing_token is not None:
        document["_fence"] = fencing_token
    return document


def conversation_update(conversation: Conversation, *, fencing_token: int | None) -> Document:
    """The update turning a stored conversation document into `conversation`.
    An update, not a replacement, so that what is not the conversation's
    (the fence, the journal's fields) stays unless said otherwise; fields
    back at their default, which the codec leaves out, are removed."""
    fields = conversation_fields(conversation)
    update: Document = {"$set": fields}
    absent = [name for name in _CONVERSATION_FIELDS if name not in fields]
    if absent:
        update["$unset"] = dict.fromkeys(absent, "")
    if fencing_token is not None:
        update["$max"] = {"_fence": fencing_token}
    return update


def fence_admits(fencing_token: int | None) -> Document:
    """Filter: no writer with a higher fencing token wrote the conversation
    (a write without a token is not fenced)."""
    if fencing_token is None:
        return {}
    return {"$or": [{"_fence": {"$exists": False}}, {"_fence": {"$lte": fencing_token}}]}


def conversation_from_document(document: Mapping[str, Any]) -> Conversation:
    return conversation_from_dict(document)


def message_key(tenant_id: str, message_id: str) -> str:
    """The natural `_id` of a message, and of its idempotency record: its
    unique (tenant, message_id), spelled `<length of tenant_id>:<tenant_id>:<message_id>`
    (`8:tenant-a:m-1`). The length prefix makes the spelling unambiguous
    whatever characters the two ids hold, so two keys never collide."""
    return f"{len(tenant_id)}:{tenant_id}:{message_id}"


@dataclass(frozen=True, slots=True)
class Keys:
    """How a message or an idempotency record is found by (tenant, message_id).

    By its natural `_id` (message_key): every server looks `_id` up at once,
    while nx-27017, the test server, scans the collection for a filter on
    any other key. Messages and records stored before natural ids have the
    driver's ObjectIds, and `_id` never changes, so in a database holding
    any (`by_id` False, as found at open, see schema.py) they are found by
    their unique (tenant_id, message_id) index, which finds both kinds.
    """

    by_id: bool = True

    def where(self, tenant_id: str, message_id: str) -> Document:
        if self.by_id:
            return {"_id": message_key(tenant_id, message_id)}
        return {"tenant_id": tenant_id, "message_id": message_id}


def message_document(message: Message) -> Document:
    """The codec's dict plus the natural `_id`, the search form of its text,
    and `created_us`, the creation time that the listing of pending
    deliveries sorts and pages on (store.list_pending_deliveries)."""
    return {
        "_id": message_key(message.tenant_id, message.message_id),
        **message_to_dict(message),
        "search_text": message_search_text(message),
        "created_us": epoch_micros(message.created_at),
    }


def message_from_document(document: Mapping[str, Any]) -> Message:
    return message_from_dict(document)


# A PENDING reply's delivery lease: {owner, until} (until in epoch
# microseconds, the claimant's clock), set by store.claim_delivery; absent
# when free. Every move of the delivery status removes it (`$unset`).
DELIVERY_LEASE = "_delivery"


def delivery_free(owner: str, now_us: int) -> Document:
    """Filter: the reply's delivery lease is free to `owner` at `now_us`:
    none, run out, or its own. (An $or: keep it inside all_of.)"""
    return {
        "$or": [
            {DELIVERY_LEASE: {"$exists": False}},
            {f"{DELIVERY_LEASE}.owner": owner},
            {f"{DELIVERY_LEASE}.until": {"$lte": now_us}},
        ]
    }


def record_document(record: IdempotencyRecord, *, stored_at: datetime, version: int) -> Document:
    """`stored_at` (a BSON date) drives the TTL index; `version` is the
    conversation version of the write that saved it, so that a late repeat of
    an older write never replaces a newer record (journal.py). Without `_id`:
    a record is upserted by its key, which gives it its `_id` (Keys.where)."""
    return {**idempotency_record_to_dict(record), "stored_at": stored_at, "version": version}


def record_from_document(document: Mapping[str, Any]) -> IdempotencyRecord:
    return idempotency_record_from_dict(document)


def outbox_document(position: int, event: Document) -> Document:
    """`event`: as event_to_dict gives it."""
    # The position is the _id (a repeated insert of the same event is a
    # duplicate, which makes journal replays idempotent) and is kept again
    # as a plain field for the claim index: nx-27017 cannot have _id inside
    # a compound index (see tests/integration/test_mongo_store.py).
    return {
        "_id": Int64(position),
        "position": Int64(position),
        "event": event,
        "unpublished": True,
    }


def outbox_entry(document: Mapping[str, Any]) -> OutboxEntry:
    return OutboxEntry(int(document["position"]), event_from_dict(document["event"]))


@dataclass(frozen=True, slots=True)
class EncodedChange:
    """A ConversationChange as the documents it writes, encoded once before
    any of them is (so a retried transaction encodes nothing again)."""

    conversation_id: str
    tenant_id: str
    expected_version: int
    fencing_token: int | None
    conversation: Document  # to insert, when expected_version is 0
    conversation_update: Document  # to apply, otherwise
    messages: tuple[Document, ...]
    message_ids: tuple[str, ...]  # of `messages`, in the same order
    message_keys: tuple[str, ...]  # their `_id`s, in the same order
    events: tuple[Document, ...]  # event_to_dict's, positioned when written
    record: Document | None


def encode_change(change: ConversationChange, *, stored_at: datetime) -> EncodedChange:
    new = change.conversation
    return EncodedChange(
        conversation_id=new.conversation_id,
        tenant_id=new.tenant_id,
        expected_version=change.expected_version,
        fencing_token=change.fencing_token,
        conversation=conversation_document(new, fencing_token=change.fencing_token),
        conversation_update=conversation_update(new, fencing_token=change.fencing_token),
        messages=tuple(message_document(message) for message in change.messages),
        message_ids=tuple(message.message_id for message in change.messages),
        message_keys=tuple(
            message_key(message.tenant_id, message.message_id) for message in change.messages
        ),
        events=tuple(event_to_dict(event) for event in change.events),
        record=None
        if change.record is None
        else record_document(change.record, stored_at=stored_at, version=new.version),
    )

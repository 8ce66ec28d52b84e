"""The store's writes, each a unit of work run whole by the writer thread
inside its transaction (connections.GroupCommitWriter): a conversation
change, a delivery status moved forward (with the platform's id for the
message, once sent), and a dead letter requeued, each with its events; and
the delivery leases of PENDING replies (claimed, renewed, released; any
status move ends one)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from adapters.sqlite.rows import (
    Params,
    conversation_params,
    dump_json,
    message_from_row,
    message_params,
    record_params,
)
from adapters.storage.changes import already_exists, stale_version
from adapters.storage.sent import sent_metadata_patch
from chat_service.domain.enums import DeliveryStatus
from chat_service.domain.event_codec import event_to_dict
from chat_service.domain.events import DomainEvent
from chat_service.domain.model import Message
from chat_service.ports import ConversationChange, DuplicateMessage

_INSERT_CONVERSATION = """
INSERT INTO conversations (
    conversation_id, tenant_id, user_id, channel, status, created_at, updated_at,
    last_sequence, version, session_id, status_reason, state, channel_metadata, fence
) VALUES (
    :conversation_id, :tenant_id, :user_id, :channel, :status, :created_at, :updated_at,
    :last_sequence, :version, :session_id, :status_reason, :state, :channel_metadata, :fence
)
"""

_REPLACE_CONVERSATION = """
UPDATE conversations SET
    user_id = :user_id, channel = :channel, status = :status,
    created_at = :created_at, updated_at = :updated_at,
    last_sequence = :last_sequence, version = :version, session_id = :session_id,
    status_reason = :status_reason, state = :state, channel_metadata = :channel_metadata,
    fence = coalesce(:fence, fence)
WHERE conversation_id = :conversation_id AND tenant_id = :tenant_id
    AND version = :expected_version
    AND (:fence IS NULL OR fence IS NULL OR fence <= :fence)
"""

_INSERT_MESSAGE = """
INSERT INTO messages (
    conversation_id, sequence, tenant_id, message_id, role, channel, user_id, content,
    search_text, created_at, delivery_status, client_time, channel_metadata,
    reply_to_message_id, fingerprint
) VALUES (
    :conversation_id, :sequence, :tenant_id, :message_id, :role, :channel, :user_id, :content,
    :search_text, :created_at, :delivery_status, :client_time, :channel_metadata,
    :reply_to_message_id, :fingerprint
)
"""

# A record is saved, not inserted: the latest result of a message id wins.
_SAVE_RECORD = """
INSERT OR REPLACE INTO idempotency_records (tenant_id, message_id, fingerprint, result, created_at)
VALUES (:tenant_id, :message_id, :fingerprint, :result, :created_at)
"""

_APPEND_EVENT = "INSERT INTO outbox (tenant_id, event) VALUES (?, ?)"

_UNIQUENESS = frozenset({sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY, sqlite3.SQLITE_CONSTRAINT_UNIQUE})


@dataclass(frozen=True, slots=True)
class EncodedChange:
    """A ConversationChange as SQL parameters, encoded before it reaches the
    writer thread so that the write lock is held for SQL only."""

    conversation_id: str
    expected_version: int
    fencing_token: int | None
    conversation: Params
    messages: list[tuple[str, Params]]
    events: list[tuple[str, str]]
    record: Params | None

    @classmethod
    def of(cls, change: ConversationChange) -> EncodedChange:
        conversation = conversation_params(change.conversation)
        # One set of parameters serves the insert and the update (each names
        # the keys it uses).
        conversation["fence"] = change.fencing_token
        conversation["expected_version"] = change.expected_version
        return cls(
            conversation_id=change.conversation.conversation_id,
            expected_version=change.expected_version,
            fencing_token=change.fencing_token,
            conversation=conversation,
            messages=[(m.message_id, message_params(m)) for m in change.messages],
            events=_event_rows(change.events),
            record=None if change.record is None else record_params(change.record),
        )


def write_change(connection: sqlite3.Connection, change: EncodedChange) -> None:
    if change.expected_version == 0:
        try:
            connection.execute(_INSERT_CONVERSATION, change.conversation)
        except sqlite3.IntegrityError as error:
            raise already_exists(change.conversation_id) from error
    else:
        replaced = connection.execute(_REPLACE_CONVERSATION, change.conversation)
        if replaced.rowcount != 1:
            raise stale_version(
                change.conversation_id, change.expected_version, change.fencing_token
            )
    for message_id, params in change.messages:
        try:
            connection.execute(_INSERT_MESSAGE, params)
        except sqlite3.IntegrityError as error:
            if error.sqlite_errorcode in _UNIQUENESS:
                raise DuplicateMessage(message_id) from error
            raise
    connection.executemany(_APPEND_EVENT, change.events)
    if change.record is not None:
        connection.execute(_SAVE_RECORD, change.record)


def advance_delivery_status(
    connection: sqlite3.Connection,
    tenant_id: str,
    message_id: str,
    status: DeliveryStatus,
    event: DomainEvent | None,
    platform_message_id: str = "",
    channel_data: Mapping[str, str | int | bool] | None = None,
) -> bool:
    events = _event_rows(() if event is None else (event,))
    row = connection.execute(
        "SELECT delivery_status FROM messages WHERE tenant_id = ? AND message_id = ?",
        (tenant_id, message_id),
    ).fetchone()
    if row is None or not DeliveryStatus(row["delivery_status"]).can_advance_to(status):
        return False
    recorded = sent_metadata_patch(platform_message_id, channel_data)
    if recorded:
        connection.execute(
            _RECORD_SENT, (status.value, json.dumps(recorded), tenant_id, message_id)
        )
    else:
        connection.execute(
            "UPDATE messages SET delivery_status = ?,"
            " delivery_owner = NULL, delivery_until = NULL"
            " WHERE tenant_id = ? AND message_id = ?",
            (status.value, tenant_id, message_id),
        )
    connection.executemany(_APPEND_EVENT, events)
    return True


# The status and what the platform told about the sent message in one
# statement; json_patch (RFC 7396 merge) keeps the rest of the channel
# metadata, additional_data's other keys included, as it is. Like every move
# of the delivery status, it ends the reply's delivery lease.
_RECORD_SENT = """
UPDATE messages SET
    delivery_status = ?,
    channel_metadata = json_patch(channel_metadata, ?),
    delivery_owner = NULL, delivery_until = NULL
WHERE tenant_id = ? AND message_id = ?
"""


def requeue_delivery(
    connection: sqlite3.Connection, tenant_id: str, message_id: str, event: DomainEvent
) -> Message | None:
    """FAILED -> PENDING with its event; the message as it is then, or None."""
    requeued = connection.execute(
        "UPDATE messages SET delivery_status = ?, delivery_owner = NULL, delivery_until = NULL"
        " WHERE tenant_id = ? AND message_id = ? AND delivery_status = ?",
        (DeliveryStatus.PENDING.value, tenant_id, message_id, DeliveryStatus.FAILED.value),
    )
    if requeued.rowcount != 1:
        return None
    connection.executemany(_APPEND_EVENT, _event_rows((event,)))
    row = connection.execute(
        "SELECT * FROM messages WHERE tenant_id = ? AND message_id = ?", (tenant_id, message_id)
    ).fetchone()
    return message_from_row(row)


# Free to :owner at :now: unleased, run out, or its own (queries.py lists by
# the same terms).
DELIVERY_FREE = "(delivery_owner IS NULL OR delivery_owner = :owner OR delivery_until <= :now)"

_CLAIM_DELIVERY = """
UPDATE messages SET delivery_owner = :owner, delivery_until = :until
WHERE tenant_id = :tenant_id AND message_id = :message_id AND delivery_status = 'pending'
    AND (delivery_owner IS NULL OR delivery_owner = :owner OR delivery_until <= :now)
"""


def claim_delivery(connection: sqlite3.Connection, params: Params) -> bool:
    """Leases a PENDING reply to :owner until :until if it is free to it at
    :now; whether it did (one conditional update: of two claimants, one wins)."""
    return connection.execute(_CLAIM_DELIVERY, params).rowcount == 1


def release_delivery(
    connection: sqlite3.Connection, tenant_id: str, message_id: str, owner: str
) -> None:
    connection.execute(
        "UPDATE messages SET delivery_owner = NULL, delivery_until = NULL"
        " WHERE tenant_id = ? AND message_id = ? AND delivery_owner = ?",
        (tenant_id, message_id, owner),
    )


def _event_rows(events: Iterable[DomainEvent]) -> list[tuple[str, str]]:
    return [(event.tenant_id, dump_json(event_to_dict(event))) for event in events]

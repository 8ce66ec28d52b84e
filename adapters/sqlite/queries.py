"""The SQL of the store's reads: each a statement and its parameters,
built from fixed fragments with every value bound."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import datetime
from typing import TypeVar

from adapters.sqlite.rows import Params
from adapters.sqlite.writes import DELIVERY_FREE
from adapters.storage.search import query_search_text
from adapters.storage.times import to_micros
from chat_service.ports import ConversationCursor, ConversationQuery, DeliveryClaimant

_T = TypeVar("_T")


def fetch_all(
    connection: sqlite3.Connection,
    sql: str,
    params: Params | tuple[object, ...],
    decode: Callable[[sqlite3.Row], _T],
) -> list[_T]:
    return [decode(row) for row in connection.execute(sql, params)]


def select_conversations(
    tenant_id: str,
    query: ConversationQuery,
    limit: int,
    after: ConversationCursor | None,
) -> tuple[str, Params]:
    where = ["c.tenant_id = :tenant_id"]
    params: Params = {"tenant_id": tenant_id, "limit": limit}
    if query.status is not None:
        where.append("c.status = :status")
        params["status"] = query.status.value
    if query.channel is not None:
        where.append("c.channel = :channel")
        params["channel"] = query.channel.value
    if query.user_id:
        where.append("c.user_id = :user_id")
        params["user_id"] = query.user_id
    if query.start_time is not None:
        where.append("c.created_at >= :start_time")
        params["start_time"] = to_micros(query.start_time)
    if query.end_time is not None:
        where.append("c.created_at < :end_time")
        params["end_time"] = to_micros(query.end_time)
    if query.search_query:
        # instr() is a plain substring test: unlike LIKE, it gives % and _
        # no meaning, so the query needs no escaping. Both sides are in
        # their search form (storage/search.py).
        where.append(
            "EXISTS (SELECT 1 FROM messages AS m WHERE m.conversation_id = c.conversation_id"
            " AND instr(m.search_text, :search) > 0)"
        )
        params["search"] = query_search_text(query.search_query)
    if after is not None:
        # Keyset pagination: a row-value comparison the index serves directly.
        beyond = "<" if query.descending else ">"
        where.append(f"(c.created_at, c.conversation_id) {beyond} (:after_time, :after_id)")
        params["after_time"] = to_micros(after.created_at)
        params["after_id"] = after.conversation_id
    order = "DESC" if query.descending else "ASC"
    sql = (
        "SELECT c.* FROM conversations AS c WHERE "  # noqa: S608 (fixed fragments; values bound)
        + " AND ".join(where)
        + f" ORDER BY c.created_at {order}, c.conversation_id {order} LIMIT :limit"
    )
    return sql, params


def select_messages(
    tenant_id: str,
    conversation_id: str,
    *,
    limit: int,
    after_sequence: int | None = None,
    through_sequence: int | None = None,
    descending: bool = False,
) -> tuple[str, Params]:
    where = ["conversation_id = :conversation_id", "tenant_id = :tenant_id"]
    params: Params = {"conversation_id": conversation_id, "tenant_id": tenant_id, "limit": limit}
    if after_sequence is not None:
        where.append("sequence < :after" if descending else "sequence > :after")
        params["after"] = after_sequence
    if through_sequence is not None:
        where.append("sequence <= :through")
        params["through"] = through_sequence
    order = "DESC" if descending else "ASC"
    sql = (
        "SELECT * FROM messages WHERE "  # noqa: S608 (fixed fragments; values bound)
        + " AND ".join(where)
        + f" ORDER BY sequence {order} LIMIT :limit"
    )
    return sql, params


# Both repeat the WHERE terms of their partial index literally (schema.py,
# version 5): SQLite uses a partial index only for a query stating them.
_BY_PLATFORM_ID = """
SELECT * FROM messages
WHERE tenant_id = :tenant_id AND channel = :channel
    AND json_extract(channel_metadata, '$.platform_message_id') = :platform_message_id
    AND role != 'user'
LIMIT 1
"""


def select_by_platform_id(
    tenant_id: str, channel: str, platform_message_id: str
) -> tuple[str, Params]:
    return _BY_PLATFORM_ID, {
        "tenant_id": tenant_id,
        "channel": channel,
        "platform_message_id": platform_message_id,
    }


def select_pending_deliveries(
    *, limit: int, after: tuple[datetime, str] | None, claimable_by: DeliveryClaimant | None
) -> tuple[str, Params]:
    where = ["delivery_status = 'pending'", "role != 'user'"]
    params: Params = {"limit": limit}
    if after is not None:
        where.append("(created_at, message_id) > (:after_time, :after_id)")
        params["after_time"] = to_micros(after[0])
        params["after_id"] = after[1]
    if claimable_by is not None:
        # The claim's own terms (writes.py), on the rows the index finds.
        where.append(DELIVERY_FREE)
        params["owner"] = claimable_by.owner
        params["now"] = to_micros(claimable_by.now)
    sql = (
        "SELECT * FROM messages WHERE "  # noqa: S608 (fixed fragments; values bound)
        + " AND ".join(where)
        + " ORDER BY created_at, message_id LIMIT :limit"
    )
    return sql, params

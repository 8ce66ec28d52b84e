"""The outbox on SQLite: claims, publication marks, the event log, retention.

Positions are AUTOINCREMENT row ids taken inside the write that appends
the events, and every write is one `BEGIN IMMEDIATE` transaction (one
writer per file, across processes too): positions commit in increasing
order by themselves. So, unlike MongoDB's journalled writes, no reader or
claim can ever see a position before a lower one is written, and neither
needs a bound.

Retention deletes published rows from the head of the log and records, in
the same transaction, the highest position it deleted (`outbox_pruned`),
so that a read after a lower position is refused (EventsPruned) rather
than silently missing events.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence

from adapters.sqlite.rows import load_json
from chat_service.domain.events import OutboxEntry
from chat_service.domain.serialization import event_from_dict
from chat_service.ports import EventsPruned

_OLDEST_UNPUBLISHED = """
SELECT position, event, claimed_by, claimed_until FROM outbox
WHERE published_at IS NULL
ORDER BY position
LIMIT :limit
"""


def claim(
    connection: sqlite3.Connection, owner: str, limit: int, lease_micros: int
) -> list[OutboxEntry]:
    now = now_micros()
    rows = []
    for row in connection.execute(_OLDEST_UNPUBLISHED, {"limit": limit}):
        held_by = row["claimed_by"]
        if held_by is not None and held_by != owner and row["claimed_until"] > now:
            break  # another relay's: the run ends here (at the head: nothing)
        rows.append(row)
    connection.executemany(
        "UPDATE outbox SET claimed_by = ?, claimed_until = ? WHERE position = ?",
        [(owner, now + lease_micros, row["position"]) for row in rows],
    )
    return [_entry(row) for row in rows]


def mark_published(connection: sqlite3.Connection, owner: str, positions: Sequence[int]) -> None:
    # Only rows this owner holds: once its lease has passed to another
    # owner, that owner publishes (again) and marks; delivery is at least once.
    now = now_micros()
    connection.executemany(
        "UPDATE outbox SET published_at = ?"
        " WHERE position = ? AND claimed_by = ? AND published_at IS NULL",
        [(now, position, owner) for position in positions],
    )


def read_events(
    connection: sqlite3.Connection, after_position: int, limit: int, tenant_id: str | None
) -> list[OutboxEntry]:
    if tenant_id is None:
        sql = "SELECT position, event FROM outbox WHERE position > ? ORDER BY position LIMIT ?"
        params: tuple[object, ...] = (after_position, limit)
    else:
        sql = (
            "SELECT position, event FROM outbox WHERE tenant_id = ? AND position > ?"
            " ORDER BY position LIMIT ?"
        )
        params = (tenant_id, after_position, limit)
    entries = [_entry(row) for row in connection.execute(sql, params)]
    # After the rows: a pruning that removed any of them had recorded its
    # reach before (in its own transaction), so it is seen here.
    pruned = pruned_through(connection)
    if after_position < pruned:
        raise EventsPruned(after_position, pruned)
    return entries


def last_position(connection: sqlite3.Connection) -> int:
    row = connection.execute(
        "SELECT max(coalesce((SELECT max(position) FROM outbox), 0),"
        " (SELECT through FROM outbox_pruned)) AS last"
    ).fetchone()
    return int(row["last"])


def pruned_through(connection: sqlite3.Connection) -> int:
    return int(connection.execute("SELECT through FROM outbox_pruned").fetchone()["through"])


def prune(
    connection: sqlite3.Connection, published_before_micros: int, keep_last: int, limit: int
) -> int:
    """ConversationStore.prune_outbox, in the writer's transaction."""
    kept_from = last_position(connection) - keep_last  # up to here: beyond the count
    through = None
    head = connection.execute(
        "SELECT position, published_at FROM outbox ORDER BY position LIMIT ?", (limit,)
    )
    for row in head:
        published_at = row["published_at"]
        if published_at is None:
            break
        if published_at >= published_before_micros and row["position"] > kept_from:
            break
        through = row["position"]
    if through is None:
        return 0
    connection.execute("UPDATE outbox_pruned SET through = max(through, ?)", (through,))
    deleted = connection.execute(
        "DELETE FROM outbox WHERE position <= ? AND published_at IS NOT NULL", (through,)
    )
    return int(deleted.rowcount)


def _entry(row: sqlite3.Row) -> OutboxEntry:
    return OutboxEntry(row["position"], event_from_dict(load_json(row["event"])))


def now_micros() -> int:
    # Wall-clock time: leases must mean the same to every process on the file.
    return time.time_ns() // 1000

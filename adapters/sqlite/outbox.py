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
from collections.abc import Sequence

from adapters.sqlite.rows import load_json
from adapters.storage.outbox import (
    HeadRow,
    Lease,
    claimable_count,
    prune_reach,
    refuse_pruned,
)
from adapters.storage.times import now_micros
from chat_service.domain.event_codec import event_from_dict
from chat_service.domain.events import DomainEvent, OutboxEntry

_OLDEST_UNPUBLISHED = """
SELECT position, event, claimed_by, claimed_until FROM outbox
WHERE published_at IS NULL
ORDER BY position
LIMIT :limit
"""


class WrittenEvents:
    """The events this process wrote lately, by their stored text, so that a
    claim (or a read of the log) takes the event itself instead of decoding
    its text again: the relay would decode each event only to publish it.

    Filled on the event loop's thread as a write is encoded, before it
    commits; that is safe because only the event itself has its text
    (event ids are unique), so a text found in the log is that event's,
    whether or not the write that remembered it committed. Read on the
    writer's and the readers' threads with `get` only, which the GIL keeps
    whole beside the loop thread's inserts and evictions. Bounded: the
    oldest go first, and an event not found is decoded as before.
    """

    def __init__(self, size: int = 4096) -> None:
        self._events: dict[str, DomainEvent] = {}
        self._size = size

    def remember(self, text: str, event: DomainEvent) -> None:
        events = self._events
        events[text] = event
        if len(events) > self._size:
            del events[next(iter(events))]

    def event_of(self, text: str) -> DomainEvent:
        event = self._events.get(text)
        return event_from_dict(load_json(text)) if event is None else event


def claim(
    connection: sqlite3.Connection,
    owner: str,
    limit: int,
    lease_micros: int,
    written: WrittenEvents,
) -> list[OutboxEntry]:
    now = now_micros()
    oldest = connection.execute(_OLDEST_UNPUBLISHED, {"limit": limit}).fetchall()
    leases = (Lease(row["claimed_by"], row["claimed_until"]) for row in oldest)
    rows = oldest[: claimable_count(leases, owner, now)]
    if rows:
        # One statement for the run: the rows claimed are every unpublished
        # row from the first to the last of them (the oldest, in order).
        connection.execute(
            "UPDATE outbox SET claimed_by = ?, claimed_until = ?"
            " WHERE position BETWEEN ? AND ? AND published_at IS NULL",
            (owner, now + lease_micros, rows[0]["position"], rows[-1]["position"]),
        )
    return [_entry(row, written) for row in rows]


def mark_published(connection: sqlite3.Connection, owner: str, positions: Sequence[int]) -> None:
    # Only rows this owner holds: once its lease has passed to another
    # owner, that owner publishes (again) and marks; delivery is at least once.
    # The positions as one JSON array: one statement for the batch.
    listed = "[" + ",".join(str(int(position)) for position in positions) + "]"
    connection.execute(
        "UPDATE outbox SET published_at = ?"
        " WHERE claimed_by = ? AND published_at IS NULL"
        " AND position IN (SELECT value FROM json_each(?))",
        (now_micros(), owner, listed),
    )


def read_events(
    connection: sqlite3.Connection,
    after_position: int,
    limit: int,
    tenant_id: str | None,
    written: WrittenEvents,
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
    entries = [_entry(row, written) for row in connection.execute(sql, params)]
    # After the rows: a pruning that removed any of them had recorded its
    # reach before (in its own transaction), so it is seen here.
    refuse_pruned(after_position, pruned_through(connection))
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
    last = last_position(connection)
    head = connection.execute(
        "SELECT position, published_at FROM outbox ORDER BY position LIMIT ?", (limit,)
    )
    through = prune_reach(
        (
            HeadRow(row["position"], row["published_at"] is not None, row["published_at"])
            for row in head
        ),
        published_before=published_before_micros,
        last_position=last,
        keep_last=keep_last,
    )
    if through is None:
        return 0
    connection.execute("UPDATE outbox_pruned SET through = max(through, ?)", (through,))
    deleted = connection.execute(
        "DELETE FROM outbox WHERE position <= ? AND published_at IS NOT NULL", (through,)
    )
    return int(deleted.rowcount)


def _entry(row: sqlite3.Row, written: WrittenEvents) -> OutboxEntry:
    return OutboxEntry(row["position"], written.event_of(row["event"]))

"""The SQLite schema, applied as numbered migrations.

`PRAGMA user_version` holds the number of migrations applied; opening a
database applies the missing ones, each in its own transaction, so opening
is idempotent and safe for two processes at once. To change the schema,
append a migration; never edit a released one.

Times are INTEGER microseconds since the epoch (UTC): exact, compact, and
ordered by SQLite's integer comparison. Structured parts (content, state,
channel metadata, results, events) are JSON text in the shape of
chat_service.domain.serialization. Only features of SQLite 3.15+ are used
(row values in the keyset pagination), nothing newer such as STRICT tables
or RETURNING, so older system libraries can open the file.
"""

from __future__ import annotations

import sqlite3

from chat_service.ports import StoreUnavailable

MIN_SQLITE_VERSION = (3, 15, 0)

_V1 = (
    """
    CREATE TABLE conversations (
        conversation_id  TEXT PRIMARY KEY,
        tenant_id        TEXT NOT NULL,
        user_id          TEXT NOT NULL,
        channel          TEXT NOT NULL,
        status           TEXT NOT NULL,
        created_at       INTEGER NOT NULL,
        updated_at       INTEGER NOT NULL,
        last_sequence    INTEGER NOT NULL,
        version          INTEGER NOT NULL,
        session_id       TEXT NOT NULL,
        status_reason    TEXT NOT NULL,
        state            TEXT NOT NULL,
        channel_metadata TEXT NOT NULL
    )
    """,
    # Keyset pagination of ListConversations, and its common filters.
    """
    CREATE INDEX conversations_by_tenant_created
        ON conversations (tenant_id, created_at, conversation_id)
    """,
    "CREATE INDEX conversations_by_tenant_user ON conversations (tenant_id, user_id)",
    """
    CREATE INDEX conversations_by_tenant_status_channel
        ON conversations (tenant_id, status, channel)
    """,
    """
    CREATE TABLE messages (
        conversation_id     TEXT NOT NULL,
        sequence            INTEGER NOT NULL,
        tenant_id           TEXT NOT NULL,
        message_id          TEXT NOT NULL,
        role                TEXT NOT NULL,
        channel             TEXT NOT NULL,
        user_id             TEXT NOT NULL,
        content             TEXT NOT NULL,
        search_text         TEXT NOT NULL,  -- content text, casefolded
        created_at          INTEGER NOT NULL,
        delivery_status     TEXT NOT NULL,
        client_time         INTEGER,
        channel_metadata    TEXT NOT NULL,
        reply_to_message_id TEXT NOT NULL,
        fingerprint         TEXT NOT NULL,
        PRIMARY KEY (conversation_id, sequence),
        UNIQUE (tenant_id, message_id)
    )
    """,
    """
    CREATE TABLE idempotency_records (
        tenant_id   TEXT NOT NULL,
        message_id  TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        result      TEXT NOT NULL,
        created_at  INTEGER NOT NULL,
        PRIMARY KEY (tenant_id, message_id)
    )
    """,
    # AUTOINCREMENT: positions are never reused, even once published rows
    # are pruned, so a position orders events for good.
    """
    CREATE TABLE outbox (
        position      INTEGER PRIMARY KEY AUTOINCREMENT,
        event         TEXT NOT NULL,
        claimed_by    TEXT,
        claimed_until INTEGER,
        published_at  INTEGER
    )
    """,
    # Claims scan only what is left to publish, however long the history.
    "CREATE INDEX outbox_unpublished ON outbox (position) WHERE published_at IS NULL",
)

# Version 2: the outbox is also read as the event log, per tenant
# (WatchConversations), so it gets a tenant column and an index for that.
_V2 = (
    "ALTER TABLE outbox ADD COLUMN tenant_id TEXT NOT NULL DEFAULT ''",
    "UPDATE outbox SET tenant_id = json_extract(event, '$.tenant_id')",
    "CREATE INDEX outbox_by_tenant ON outbox (tenant_id, position)",
)

# Version 3: the highest lock fencing token that wrote each conversation.
_V3 = ("ALTER TABLE conversations ADD COLUMN fence INTEGER",)

# Version 4: outbox retention. How far pruning has deleted the head of the
# event log (outbox.py), in a one-row table: a read after a lower position
# would miss events, and is refused.
_V4 = (
    "CREATE TABLE outbox_pruned (through INTEGER NOT NULL)",
    "INSERT INTO outbox_pruned (through) VALUES (0)",
)

# Version 5: platform deliveries. Status callbacks find an outbound message
# by the platform's id for it (kept in its channel metadata), and start-up
# finds the replies a crash left PENDING. Both indexes are partial, so they
# hold outbound messages only (and PENDING ones only); queries must repeat
# their WHERE terms literally (queries.py) for SQLite to use them.
_V5 = (
    """
    CREATE INDEX messages_by_platform_id ON messages (
        tenant_id, channel, json_extract(channel_metadata, '$.platform_message_id')
    ) WHERE role != 'user'
    """,
    """
    CREATE INDEX messages_pending_delivery ON messages (created_at, message_id)
        WHERE delivery_status = 'pending' AND role != 'user'
    """,
)

# Version 6: channels (adapters/sqlite/channel_store.py). Tenants'
# connections (a JSON document in connection_codec's shape beside the
# columns looked up and kept unique), the audit log of their changes, and
# the inbox of acknowledged webhook calls (body as received, in a BLOB).
CHANNEL_TABLES = (
    """
    CREATE TABLE channel_connections (
        tenant_id     TEXT NOT NULL,
        connection_id TEXT NOT NULL,
        channel       TEXT NOT NULL,
        account_id    TEXT NOT NULL,
        request_id    TEXT NOT NULL,
        version       INTEGER NOT NULL,
        document      TEXT NOT NULL,
        PRIMARY KEY (tenant_id, connection_id),
        UNIQUE (tenant_id, channel, account_id)
    )
    """,
    # Create is idempotent by request id, when the caller gives one.
    """
    CREATE UNIQUE INDEX channel_connections_by_request
        ON channel_connections (tenant_id, request_id) WHERE request_id != ''
    """,
    """
    CREATE TABLE connection_audit (
        entry         INTEGER PRIMARY KEY AUTOINCREMENT,
        tenant_id     TEXT NOT NULL,
        connection_id TEXT NOT NULL,
        at            INTEGER NOT NULL,
        document      TEXT NOT NULL
    )
    """,
    "CREATE INDEX connection_audit_by_tenant ON connection_audit (tenant_id, at, entry)",
    """
    CREATE INDEX connection_audit_by_connection
        ON connection_audit (tenant_id, connection_id, at, entry)
    """,
    """
    CREATE TABLE webhook_inbox (
        position      INTEGER PRIMARY KEY AUTOINCREMENT,
        tenant_id     TEXT NOT NULL,
        channel       TEXT NOT NULL,
        dedup_key     TEXT NOT NULL,
        document      TEXT NOT NULL,  -- the delivery but its body
        body          BLOB NOT NULL,
        attempts      INTEGER NOT NULL DEFAULT 0,
        not_before    INTEGER NOT NULL DEFAULT 0,
        claimed_by    TEXT,
        claimed_until INTEGER,
        processed_at  INTEGER,
        error         TEXT NOT NULL DEFAULT '',
        dead          INTEGER NOT NULL DEFAULT 0,
        UNIQUE (tenant_id, channel, dedup_key)
    )
    """,
    # Claims scan what is left to process, retention what was processed.
    "CREATE INDEX webhook_inbox_unprocessed ON webhook_inbox (position) WHERE processed_at IS NULL",
    """
    CREATE INDEX webhook_inbox_processed ON webhook_inbox (processed_at)
        WHERE processed_at IS NOT NULL
    """,
)

# Version 7: delivery leases (writes.claim_delivery). The process
# delivering a PENDING reply and until when (microseconds, its clock), so
# that processes sharing the file never send one reply at once. NULL: free.
DELIVERY_LEASES = (
    "ALTER TABLE messages ADD COLUMN delivery_owner TEXT",
    "ALTER TABLE messages ADD COLUMN delivery_until INTEGER",
)

# Version 8: SMS opt-outs (channel_store.set_opt_out). A platform user's
# latest STOP or START on one connection, and when (microseconds): the
# sender sends nothing to an opted-out number.
OPT_OUTS = (
    """
    CREATE TABLE channel_opt_outs (
        tenant_id     TEXT NOT NULL,
        connection_id TEXT NOT NULL,
        user_id       TEXT NOT NULL,
        opted_out     INTEGER NOT NULL,
        at            INTEGER NOT NULL,
        PRIMARY KEY (tenant_id, connection_id, user_id)
    )
    """,
)

# MIGRATIONS[n] takes a database from version n to version n + 1.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    _V1,
    _V2,
    _V3,
    _V4,
    _V5,
    CHANNEL_TABLES,
    DELIVERY_LEASES,
    OPT_OUTS,
)
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(connection: sqlite3.Connection) -> None:
    """Bring the database up to SCHEMA_VERSION. The connection must be in
    autocommit mode (isolation_level=None)."""
    if sqlite3.sqlite_version_info < MIN_SQLITE_VERSION:
        raise StoreUnavailable(
            f"SQLite {sqlite3.sqlite_version} is too old; "
            f"{'.'.join(map(str, MIN_SQLITE_VERSION))} or newer is needed"
        )
    while (version := _user_version(connection)) < SCHEMA_VERSION:
        connection.execute("BEGIN IMMEDIATE")
        try:
            # Another process may have migrated while this one waited.
            if _user_version(connection) == version:
                for statement in MIGRATIONS[version]:
                    connection.execute(statement)
                # PRAGMA takes no parameters; the value is our own integer.
                connection.execute(f"PRAGMA user_version = {version + 1:d}")
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.rollback()
            raise
    if version > SCHEMA_VERSION:
        raise StoreUnavailable(
            f"database schema version {version} is newer than this release's "
            f"({SCHEMA_VERSION}); refusing to use it"
        )


def _user_version(connection: sqlite3.Connection) -> int:
    row = connection.execute("PRAGMA user_version").fetchone()
    return int(row[0])

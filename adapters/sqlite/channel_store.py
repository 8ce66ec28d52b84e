"""ConnectionStore and WebhookInbox on the SQLite store's file.

The tables (schema.py, versions 6 and 8) live in the same database file as the
conversations and go through the same machinery: every write is a unit of
work run whole by the store's one writer thread inside its transaction
(connections.GroupCommitWriter), every read a unit on its reader pool. So a
connection and its audit entry commit together or not at all, an inbox
delivery is as durable as a message once `put` returns (the file's
`synchronous` setting), and the event loop never waits on the disk.

Inbox leases compare the caller's `now` (the port hands it in) with the
expiry stored by the claim, so every process sharing the file must agree on
the time; as with the outbox, only liveness depends on that, since finish,
retry_later and dead_letter take effect only for the lease's owner.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TypeVar

from adapters.sqlite.rows import Params, dump_json, load_json
from adapters.sqlite.store import SqliteStore
from adapters.storage.changes import positive_limit
from adapters.storage.connection_codec import (
    audit_from_dict,
    audit_to_dict,
    check_audit_of,
    check_changed_connection,
    check_new_connection,
    connection_from_dict,
    connection_to_dict,
    delivery_from_dict,
    delivery_to_dict,
    stored_error,
)
from adapters.storage.times import seconds_to_micros, to_micros
from chat_service.domain.connections import AuditEntry, ChannelConnection
from chat_service.domain.enums import Channel
from chat_service.ports import ConnectionExists, VersionConflict, WebhookDelivery

_T = TypeVar("_T")

_UNIQUENESS = frozenset({sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY, sqlite3.SQLITE_CONSTRAINT_UNIQUE})

_INSERT_CONNECTION = """
INSERT INTO channel_connections (
    tenant_id, connection_id, channel, account_id, request_id, version, document
) VALUES (
    :tenant_id, :connection_id, :channel, :account_id, :request_id, :version, :document
)
"""

_REPLACE_CONNECTION = """
UPDATE channel_connections SET
    account_id = :account_id, version = :version, document = :document
WHERE tenant_id = :tenant_id AND connection_id = :connection_id
    AND version = :expected_version
"""

_APPEND_AUDIT = """
INSERT INTO connection_audit (tenant_id, connection_id, at, document)
VALUES (:tenant_id, :connection_id, :at, :document)
"""

_PUT_DELIVERY = """
INSERT OR IGNORE INTO webhook_inbox (tenant_id, channel, dedup_key, document, body)
VALUES (:tenant_id, :channel, :dedup_key, :document, :body)
"""

# The newer keyword wins: an older one (a late retry) changes nothing.
# (Insert, else update: UPSERT needs SQLite 3.24, the schema asks for 3.15.)
_INSERT_OPT_OUT = """
INSERT OR IGNORE INTO channel_opt_outs (tenant_id, connection_id, user_id, opted_out, at)
VALUES (:tenant_id, :connection_id, :user_id, :opted_out, :at)
"""
_UPDATE_OPT_OUT = """
UPDATE channel_opt_outs SET opted_out = :opted_out, at = :at
WHERE tenant_id = :tenant_id AND connection_id = :connection_id AND user_id = :user_id
    AND at <= :at
"""

# Due, unprocessed, and not on another owner's live lease: oldest first.
_CLAIMABLE = """
SELECT position FROM webhook_inbox
WHERE processed_at IS NULL AND not_before <= :now
    AND (claimed_by IS NULL OR claimed_by = :owner OR claimed_until <= :now)
ORDER BY position
LIMIT :limit
"""

# What finish, retry_later and dead_letter may change: a delivery still
# unprocessed and leased to the caller (a worker whose lease passed to
# another owner changes nothing; the new owner decides).
_HELD = "position = :position AND claimed_by = :owner AND processed_at IS NULL"


class SqliteChannelStore:
    """The ConnectionStore and WebhookInbox ports on a SqliteStore's file.
    Closed with that store (it owns the connections)."""

    def __init__(self, store: SqliteStore) -> None:
        self._store = store

    # -------------------------------------------------------- connections

    async def create_connection(
        self, connection: ChannelConnection, audit: AuditEntry
    ) -> ChannelConnection:
        check_new_connection(connection, audit)
        row = _connection_params(connection)
        entry = _audit_params(audit)
        return await self._write(lambda c: _create(c, connection, row, entry))

    async def get_connection(self, tenant_id: str, connection_id: str) -> ChannelConnection | None:
        found = await self._read(
            "SELECT document FROM channel_connections WHERE tenant_id = ? AND connection_id = ?",
            (tenant_id, connection_id),
            _connection_from_row,
        )
        return found[0] if found else None

    async def find_connection(
        self, tenant_id: str, channel: Channel, account_id: str
    ) -> ChannelConnection | None:
        found = await self._read(
            "SELECT document FROM channel_connections"
            " WHERE tenant_id = ? AND channel = ? AND account_id = ?",
            (tenant_id, channel.value, account_id),
            _connection_from_row,
        )
        return found[0] if found else None

    async def list_connections(
        self, tenant_id: str, *, channel: Channel | None, limit: int, after_id: str = ""
    ) -> Sequence[ChannelConnection]:
        sql = "SELECT document FROM channel_connections WHERE tenant_id = ? AND connection_id > ?"
        params: list[object] = [tenant_id, after_id]
        if channel is not None:
            sql += " AND channel = ?"
            params.append(channel.value)
        sql += " ORDER BY connection_id LIMIT ?"
        params.append(positive_limit(limit))
        return await self._read(sql, tuple(params), _connection_from_row)

    async def update_connection(self, connection: ChannelConnection, audit: AuditEntry) -> None:
        check_changed_connection(connection, audit)
        row = _connection_params(connection) | {"expected_version": connection.version - 1}
        entry = _audit_params(audit)
        await self._write(lambda c: _update(c, connection, row, entry))

    async def delete_connection(
        self, tenant_id: str, connection_id: str, audit: AuditEntry
    ) -> bool:
        check_audit_of(tenant_id, connection_id, audit)
        entry = _audit_params(audit)
        return await self._write(lambda c: _delete(c, tenant_id, connection_id, entry))

    async def list_audit(
        self, tenant_id: str, *, limit: int, connection_id: str = ""
    ) -> Sequence[AuditEntry]:
        sql = "SELECT document FROM connection_audit WHERE tenant_id = ?"
        params: list[object] = [tenant_id]
        if connection_id:
            sql += " AND connection_id = ?"
            params.append(connection_id)
        sql += " ORDER BY at DESC, entry DESC LIMIT ?"
        params.append(positive_limit(limit))
        return await self._read(
            sql, tuple(params), lambda row: audit_from_dict(load_json(row["document"]))
        )

    async def set_opt_out(
        self, tenant_id: str, connection_id: str, user_id: str, opted_out: bool, at: datetime
    ) -> bool:
        params = {
            "tenant_id": tenant_id,
            "connection_id": connection_id,
            "user_id": user_id,
            "opted_out": int(opted_out),
            "at": to_micros(at),
        }
        return await self._write(lambda c: _set_opt_out(c, params))

    async def is_opted_out(self, tenant_id: str, connection_id: str, user_id: str) -> bool:
        found = await self._read(
            "SELECT opted_out FROM channel_opt_outs"
            " WHERE tenant_id = ? AND connection_id = ? AND user_id = ?",
            (tenant_id, connection_id, user_id),
            lambda row: bool(row["opted_out"]),
        )
        return bool(found and found[0])

    # -------------------------------------------------------------- inbox

    async def put(self, delivery: WebhookDelivery) -> bool:
        document = delivery_to_dict(delivery)
        body = document.pop("body")
        for assigned in ("position", "attempts"):  # the inbox's to say
            document.pop(assigned, None)
        params = {
            "tenant_id": delivery.tenant_id,
            "channel": delivery.channel.value,
            "dedup_key": delivery.dedup_key,
            "document": dump_json(document),
            "body": body,
        }
        return await self._write(lambda c: c.execute(_PUT_DELIVERY, params).rowcount == 1)

    async def claim(
        self, owner: str, *, now: datetime, limit: int, lease_seconds: float
    ) -> Sequence[WebhookDelivery]:
        params = {
            "owner": owner,
            "now": to_micros(now),
            "limit": positive_limit(limit),
            "until": to_micros(now) + seconds_to_micros(lease_seconds),
        }
        return await self._write(lambda c: _claim(c, params))

    async def finish(self, owner: str, position: int, *, now: datetime) -> None:
        await self._settle(owner, position, processed_at=to_micros(now), error=None, dead=False)

    async def retry_later(
        self, owner: str, position: int, *, not_before: datetime, error: str
    ) -> None:
        params = {
            "owner": owner,
            "position": position,
            "not_before": to_micros(not_before),
            "error": stored_error(error),
        }
        sql = (
            "UPDATE webhook_inbox SET not_before = :not_before, error = :error,"  # noqa: S608 (fixed fragments)
            " claimed_by = NULL, claimed_until = NULL WHERE " + _HELD
        )
        await self._write(lambda c: c.execute(sql, params))

    async def dead_letter(self, owner: str, position: int, *, now: datetime, error: str) -> None:
        await self._settle(
            owner, position, processed_at=to_micros(now), error=stored_error(error), dead=True
        )

    async def prune(self, *, processed_before: datetime, limit: int) -> int:
        params = {"before": to_micros(processed_before), "limit": positive_limit(limit)}
        # DELETE ... LIMIT needs a compile-time option of SQLite: a subquery
        # on the partial index does the same everywhere.
        sql = (
            "DELETE FROM webhook_inbox WHERE position IN (SELECT position FROM webhook_inbox"
            " WHERE processed_at IS NOT NULL AND processed_at < :before"
            " ORDER BY processed_at LIMIT :limit)"
        )
        return await self._write(lambda c: int(c.execute(sql, params).rowcount))

    async def _settle(
        self, owner: str, position: int, *, processed_at: int, error: str | None, dead: bool
    ) -> None:
        params = {
            "owner": owner,
            "position": position,
            "processed_at": processed_at,
            "error": error,
            "dead": int(dead),
        }
        sql = (
            "UPDATE webhook_inbox SET processed_at = :processed_at,"  # noqa: S608 (fixed fragments)
            " error = coalesce(:error, error), dead = :dead,"
            " claimed_by = NULL, claimed_until = NULL WHERE " + _HELD
        )
        await self._write(lambda c: c.execute(sql, params))

    # ----------------------------------------------------------- plumbing

    # The SQLite store's own write and read paths (same package): one
    # writer for the file, its transactions, its closed check.
    async def _write(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        return await self._store._write(work)

    async def _read(
        self, sql: str, params: tuple[object, ...], decode: Callable[[sqlite3.Row], _T]
    ) -> list[_T]:
        return await self._store._read_all(sql, params, decode)


# ------------------------------------------------------ units of work


def _create(
    connection: sqlite3.Connection, new: ChannelConnection, row: Params, entry: Params
) -> ChannelConnection:
    if new.request_id:
        created = _one_connection(
            connection,
            "SELECT document FROM channel_connections WHERE tenant_id = ? AND request_id = ?",
            (new.tenant_id, new.request_id),
        )
        if created is not None:
            return created  # the same request again: what it made, nothing written
    try:
        connection.execute(_INSERT_CONNECTION, row)
    except sqlite3.IntegrityError as error:
        if error.sqlite_errorcode not in _UNIQUENESS:
            raise
        raise _conflict(connection, new) from error
    connection.execute(_APPEND_AUDIT, entry)
    return new


def _update(
    connection: sqlite3.Connection, changed: ChannelConnection, row: Params, entry: Params
) -> None:
    try:
        replaced = connection.execute(_REPLACE_CONNECTION, row)
    except sqlite3.IntegrityError as error:
        if error.sqlite_errorcode not in _UNIQUENESS:
            raise
        raise _conflict(connection, changed) from error
    if replaced.rowcount != 1:
        raise VersionConflict(
            f"connection {changed.connection_id!r} is not at version {changed.version - 1}"
        )
    connection.execute(_APPEND_AUDIT, entry)


def _delete(
    connection: sqlite3.Connection, tenant_id: str, connection_id: str, entry: Params
) -> bool:
    deleted = connection.execute(
        "DELETE FROM channel_connections WHERE tenant_id = ? AND connection_id = ?",
        (tenant_id, connection_id),
    )
    if deleted.rowcount != 1:
        return False
    connection.execute(_APPEND_AUDIT, entry)
    return True


def _conflict(connection: sqlite3.Connection, written: ChannelConnection) -> Exception:
    """What a refused insert or update of `written` clashed with: another
    connection holding its account (or, for a create, its id)."""
    holder = _one_connection(
        connection,
        "SELECT document FROM channel_connections"
        " WHERE tenant_id = ? AND channel = ? AND account_id = ? AND connection_id != ?",
        (written.tenant_id, written.channel.value, written.account_id, written.connection_id),
    )
    return ConnectionExists(written.connection_id if holder is None else holder.connection_id)


def _one_connection(
    connection: sqlite3.Connection, sql: str, params: tuple[object, ...]
) -> ChannelConnection | None:
    row = connection.execute(sql, params).fetchone()
    return None if row is None else _connection_from_row(row)


def _set_opt_out(connection: sqlite3.Connection, params: Params) -> bool:
    if connection.execute(_INSERT_OPT_OUT, params).rowcount == 1:
        return True
    return bool(connection.execute(_UPDATE_OPT_OUT, params).rowcount == 1)


def _claim(connection: sqlite3.Connection, params: Params) -> list[WebhookDelivery]:
    positions = [row["position"] for row in connection.execute(_CLAIMABLE, params)]
    connection.executemany(
        "UPDATE webhook_inbox SET claimed_by = ?, claimed_until = ?, attempts = attempts + 1"
        " WHERE position = ?",
        [(params["owner"], params["until"], position) for position in positions],
    )
    claimed: list[WebhookDelivery] = []
    for position in positions:
        row = connection.execute(
            "SELECT position, document, body, attempts FROM webhook_inbox WHERE position = ?",
            (position,),
        ).fetchone()
        claimed.append(_delivery_from_row(row))
    return claimed


# ------------------------------------------------------------------ rows


def _connection_params(connection: ChannelConnection) -> Params:
    return {
        "tenant_id": connection.tenant_id,
        "connection_id": connection.connection_id,
        "channel": connection.channel.value,
        "account_id": connection.account_id,
        "request_id": connection.request_id,
        "version": connection.version,
        "document": dump_json(connection_to_dict(connection)),
    }


def _connection_from_row(row: sqlite3.Row) -> ChannelConnection:
    return connection_from_dict(load_json(row["document"]))


def _audit_params(audit: AuditEntry) -> Params:
    return {
        "tenant_id": audit.tenant_id,
        "connection_id": audit.connection_id,
        "at": to_micros(audit.at),
        "document": dump_json(audit_to_dict(audit)),
    }


def _delivery_from_row(row: sqlite3.Row) -> WebhookDelivery:
    return delivery_from_dict(
        load_json(row["document"])
        | {"body": row["body"], "position": row["position"], "attempts": row["attempts"]}
    )

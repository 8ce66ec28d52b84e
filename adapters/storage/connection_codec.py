"""Channel connections, their audit entries and inbox deliveries <-> the dicts
both stores keep (SQLite as JSON text beside a few key columns, MongoDB as
documents beside its own fields), in the conventions of
chat_service.domain.serialization: enums as their values, times as ISO-8601
UTC strings, fields at their declared default left out, unknown keys
ignored when decoding (each store adds its own).

Two conventions of this shape matter to the stores:
- a connection's `request_id` and `request_fingerprint` are left out when
  empty, so MongoDB's partial unique index on (tenant_id, request_id) holds
  only the connections created with one; `version` is always written, as
  both stores' conditional updates match on it;
- maps whose keys are not ours to choose (an audit entry's `detail`, a
  delivery's HTTP `headers`) are lists of [key, value] pairs: a header name
  may hold a dot, which MongoDB reads as a path in an update. The maps of a
  connection are keyed by the platform's field names (domain.connections
  PLATFORMS), so they stay objects.

A delivery's `body` is bytes here: SQLite keeps it in a BLOB column, MongoDB
as BSON binary; neither puts it through JSON.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from chat_service.domain.connections import AuditEntry, ChannelConnection
from chat_service.domain.enums import Channel
from chat_service.domain.serialization import Document, format_datetime, parse_datetime
from chat_service.ports import WebhookDelivery

# An error kept on an inbox delivery for operators (retry_later,
# dead_letter): enough to read, never enough to bloat the inbox.
MAX_ERROR_LENGTH = 2000


# ---------------------------------------------------------------- connections


def connection_to_dict(connection: ChannelConnection) -> Document:
    document: Document = {
        "connection_id": connection.connection_id,
        "tenant_id": connection.tenant_id,
        "channel": connection.channel.value,
        "account_id": connection.account_id,
        "display_name": connection.display_name,
        "webhook_url": connection.webhook_url,
        "public": dict(connection.public),
        "secrets": dict(connection.secrets),  # sealed: never plain text here
        "fingerprints": dict(connection.fingerprints),
        "created_at": format_datetime(connection.created_at),
        "updated_at": format_datetime(connection.updated_at),
        "version": connection.version,
    }
    if connection.request_id:
        document["request_id"] = connection.request_id
    if connection.request_fingerprint:
        document["request_fingerprint"] = connection.request_fingerprint
    return document


def connection_from_dict(data: Mapping[str, Any]) -> ChannelConnection:
    return ChannelConnection(
        connection_id=str(data["connection_id"]),
        tenant_id=str(data["tenant_id"]),
        channel=Channel(data["channel"]),
        account_id=str(data["account_id"]),
        display_name=str(data.get("display_name", "")),
        webhook_url=str(data.get("webhook_url", "")),
        public=_text_map(data.get("public", {})),
        secrets=_text_map(data.get("secrets", {})),
        fingerprints=_text_map(data.get("fingerprints", {})),
        created_at=parse_datetime(data["created_at"]),
        updated_at=parse_datetime(data["updated_at"]),
        version=int(data.get("version", 1)),
        request_id=str(data.get("request_id", "")),
        request_fingerprint=str(data.get("request_fingerprint", "")),
    )


# ---------------------------------------------------------------------- audit


def audit_to_dict(entry: AuditEntry) -> Document:
    document: Document = {
        "tenant_id": entry.tenant_id,
        "connection_id": entry.connection_id,
        "action": entry.action,
        "actor": entry.actor,
        "at": format_datetime(entry.at),
    }
    if entry.changed_fields:
        document["changed_fields"] = list(entry.changed_fields)
    if entry.detail:
        document["detail"] = _pairs(entry.detail)
    return document


def audit_from_dict(data: Mapping[str, Any]) -> AuditEntry:
    return AuditEntry(
        tenant_id=str(data["tenant_id"]),
        connection_id=str(data["connection_id"]),
        action=str(data["action"]),
        actor=str(data.get("actor", "")),
        at=parse_datetime(data["at"]),
        changed_fields=tuple(str(name) for name in data.get("changed_fields", ())),
        detail=_from_pairs(data.get("detail", ())),
    )


# ----------------------------------------------------------------- deliveries


def delivery_to_dict(delivery: WebhookDelivery) -> Document:
    document: Document = {
        "tenant_id": delivery.tenant_id,
        "channel": delivery.channel.value,
        "dedup_key": delivery.dedup_key,
        "body": bytes(delivery.body),
        "content_type": delivery.content_type,
        "received_at": format_datetime(delivery.received_at),
    }
    if delivery.headers:
        document["headers"] = _pairs(delivery.headers)
    if delivery.position:
        document["position"] = delivery.position
    if delivery.attempts:
        document["attempts"] = delivery.attempts
    return document


def delivery_from_dict(data: Mapping[str, Any]) -> WebhookDelivery:
    return WebhookDelivery(
        tenant_id=str(data["tenant_id"]),
        channel=Channel(data["channel"]),
        dedup_key=str(data["dedup_key"]),
        body=bytes(data["body"]),
        content_type=str(data.get("content_type", "")),
        received_at=parse_datetime(data["received_at"]),
        headers=_from_pairs(data.get("headers", ())),
        position=int(data.get("position", 0)),
        attempts=int(data.get("attempts", 0)),
    )


def stored_error(error: str) -> str:
    """`error` as an inbox delivery keeps it (cut to MAX_ERROR_LENGTH)."""
    return error[:MAX_ERROR_LENGTH]


# ------------------------------------------------------------------- checks


def check_new_connection(connection: ChannelConnection, audit: AuditEntry) -> None:
    """What every ConnectionStore checks of a create (the caller's mistakes,
    not the store's conflicts)."""
    if connection.version != 1:
        raise ValueError("a new connection must have version 1")
    check_audit_of(connection.tenant_id, connection.connection_id, audit)


def check_changed_connection(connection: ChannelConnection, audit: AuditEntry) -> None:
    if connection.version < 2:
        raise ValueError("an updated connection must be past version 1")
    check_audit_of(connection.tenant_id, connection.connection_id, audit)


def check_audit_of(tenant_id: str, connection_id: str, audit: AuditEntry) -> None:
    if (audit.tenant_id, audit.connection_id) != (tenant_id, connection_id):
        raise ValueError("the audit entry must be of the connection it is written with")


# ------------------------------------------------------------------ helpers


def _text_map(data: Mapping[str, Any]) -> dict[str, str]:
    return {str(key): str(value) for key, value in data.items()}


def _pairs(data: Mapping[str, str]) -> list[list[str]]:
    return [[key, data[key]] for key in sorted(data)]


def _from_pairs(pairs: Iterable[Any]) -> dict[str, str]:
    return {str(key): str(value) for key, value in pairs}

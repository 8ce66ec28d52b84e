"""Channel connections: the admin use cases, and the cached directory the
webhook edge and the senders read them from.

`ChannelConnections` creates, reads, lists, changes and deletes a tenant's
connections. Secrets arrive in plain text (`ConnectionFields.secrets`) and
are sealed here (SecretBox, bound to tenant, connection and field) before
anything is stored; answers carry fingerprints, never a secret. Every change
is written with its audit entry (who, what, when, never a value) and logged
by field names only.

`CachedConnections` (ports.ConnectionDirectory) keeps connections with
their secrets opened for CHANNEL_CACHE_SECONDS, so that a webhook or a
reply does not read the store and decrypt each time. This process's
changes invalidate it at once; other processes' within the TTL.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import re
import secrets
import string
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from chat_service.domain.connections import (
    PLATFORMS,
    AuditEntry,
    ChannelConnection,
    ConnectionFields,
    account_id_of,
    check_new,
    check_update,
    secret_context,
)
from chat_service.domain.enums import Channel
from chat_service.domain.errors import (
    Aborted,
    AlreadyExists,
    FieldViolation,
    InvalidArgument,
    NotFound,
)
from chat_service.pipeline.conversations import Page
from chat_service.pipeline.errors import port_errors
from chat_service.pipeline.page_tokens import PageTokens, query_digest
from chat_service.ports import (
    Clock,
    ConnectionExists,
    ConnectionStore,
    OpenedConnection,
    SecretBox,
    SecretUnreadable,
    VersionConflict,
)

log = logging.getLogger(__name__)

CONNECTION_ID_PREFIX = "cc_"
CONNECTION_ID_RANDOM_LENGTH = 24
CONNECTION_ID_PATTERN = re.compile(r"cc_[a-z0-9]{24}")
_ID_ALPHABET = string.ascii_lowercase + string.digits  # 36**24: about 2**124 ids
# AIP-155 request ids, as the contract states them.
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._:@-]{1,128}")
LIST_DEFAULT_PAGE = 20
LIST_MAX_PAGE = 100

CONNECTION_EXISTS = "CONNECTION_EXISTS"
CONNECTION_NOT_FOUND = "CONNECTION_NOT_FOUND"
CONNECTION_CHANGED = "CONNECTION_CHANGED"
REQUEST_ID_REUSED = "REQUEST_ID_REUSED"

FieldsFor = Callable[[Channel], ConnectionFields]
"""An update's fields, given the stored connection's platform (used when the
request names none: a change of `display_name` alone sets no platform)."""

Invalidate = Callable[[str], None]
"""Told the tenant whose connections just changed (CachedConnections.invalidate)."""


class ChannelConnections:
    """The admin use cases (scope chat:admin, checked at the gRPC edge)."""

    def __init__(
        self,
        *,
        store: ConnectionStore,
        box: SecretBox,
        clock: Clock,
        tokens: PageTokens,
        invalidate: Invalidate | None = None,
    ) -> None:
        self._store = store
        self._box = box
        self._clock = clock
        self._tokens = tokens
        self._invalidate = invalidate or (lambda _tenant: None)

    async def create(
        self, tenant_id: str, fields: ConnectionFields, *, request_id: str, actor: str
    ) -> ChannelConnection:
        """A new connection; with a `request_id` seen before, the connection
        that request created (if it is the same request)."""
        violations: list[FieldViolation] = []
        if request_id and not REQUEST_ID_PATTERN.fullmatch(request_id):
            violations.append(
                FieldViolation("request_id", "must be 1 to 128 of A-Z a-z 0-9 . _ : @ -")
            )
        try:
            check_new(fields)
        except InvalidArgument as invalid:
            violations.extend(invalid.violations)
        if violations:
            raise InvalidArgument(violations)
        spec = PLATFORMS[fields.channel]
        connection_id = new_connection_id()
        now = self._clock.now()
        sealed, fingerprints = self._sealed(
            tenant_id, connection_id, {name: fields.secrets[name] for name in spec.secrets}
        )
        public = {name: fields.public[name] for name, _, _ in spec.public}
        connection = ChannelConnection(
            connection_id=connection_id,
            tenant_id=tenant_id,
            channel=fields.channel,
            account_id=account_id_of(fields.channel, public),
            display_name=fields.display_name,
            webhook_url=fields.webhook_url,
            public=public,
            secrets=sealed,
            fingerprints=fingerprints,
            created_at=now,
            updated_at=now,
            version=1,
            request_id=request_id,
            request_fingerprint=self._request_fingerprint(fields) if request_id else "",
        )
        changed = _set_paths(fields)
        audit = AuditEntry(
            tenant_id=tenant_id,
            connection_id=connection_id,
            action="create",
            actor=actor,
            at=now,
            changed_fields=changed,
            detail={
                "channel": spec.name,
                "account_id": connection.account_id,
                **{f"fingerprint.{name}": value for name, value in fingerprints.items()},
            },
        )
        with port_errors():
            try:
                stored = await self._store.create_connection(connection, audit)
            except ConnectionExists as exists:
                raise _exists(exists) from None
        if stored.connection_id != connection_id:
            # A retry: the store kept the first request's connection.
            if not hmac.compare_digest(stored.request_fingerprint, connection.request_fingerprint):
                raise InvalidArgument.of(
                    "request_id",
                    "was already used for a different connection; use a new id for a new "
                    "connection",
                    reason=REQUEST_ID_REUSED,
                )
            return stored
        self._changed("create", tenant_id, connection_id, changed)
        return stored

    async def get(self, tenant_id: str, connection_id: str) -> ChannelConnection:
        _check_id(connection_id)
        with port_errors():
            found = await self._store.get_connection(tenant_id, connection_id)
        if found is None:
            raise _not_found(connection_id)
        return found

    async def list_connections(
        self, tenant_id: str, *, channel: Channel | None, page_size: int, page_token: str
    ) -> Page[ChannelConnection]:
        """A page of the tenant's connections, by connection id (AIP-132)."""
        if page_size < 0:
            raise InvalidArgument.of("page_size", f"must not be negative, got {page_size}")
        limit = LIST_DEFAULT_PAGE if page_size == 0 else min(page_size, LIST_MAX_PAGE)
        digest = query_digest("channel-connections", tenant_id, channel)
        after = ""
        if page_token:
            after_id = self._tokens.decode(page_token, digest=digest).get("id")
            if not isinstance(after_id, str) or not CONNECTION_ID_PATTERN.fullmatch(after_id):
                raise InvalidArgument.of("page_token", "is not a page token this service issued")
            after = after_id
        with port_errors():
            items = await self._store.list_connections(
                tenant_id, channel=channel, limit=limit + 1, after_id=after
            )
        token = ""
        if len(items) > limit:
            items = items[:limit]
            token = self._tokens.encode({"id": items[-1].connection_id}, digest=digest)
        return Page(items, token)

    async def update(
        self,
        tenant_id: str,
        connection_id: str,
        fields_for: FieldsFor,
        mask: Sequence[str],
        *,
        actor: str,
    ) -> ChannelConnection:
        """Applies the `mask`'s paths of the request's fields (an empty mask:
        every field the request sets). Retried once if another change came
        in between; ABORTED if that happens again."""
        _check_id(connection_id, "connection.connection_id")
        for attempt in (1, 2):
            current = await self.get(tenant_id, connection_id)
            fields = fields_for(current.channel)
            paths = _resolved_mask(mask, fields)
            check_update(current, fields, paths)
            secret_names = [
                name for path in paths if (name := path.partition(".")[2]) in current.spec.secrets
            ]
            sealed, fingerprints = self._sealed(
                tenant_id, connection_id, {name: fields.secrets[name] for name in secret_names}
            )
            now = self._clock.now()
            updated = current.changed(
                fields, paths, sealed=sealed, fingerprints=fingerprints, at=now
            )
            detail = {f"fingerprint.{name}": value for name, value in fingerprints.items()}
            if updated.account_id != current.account_id:
                detail["account_id"] = updated.account_id
            audit = AuditEntry(
                tenant_id=tenant_id,
                connection_id=connection_id,
                action="update",
                actor=actor,
                at=now,
                changed_fields=paths,
                detail=detail,
            )
            with port_errors():
                try:
                    await self._store.update_connection(updated, audit)
                except ConnectionExists as exists:
                    raise _exists(exists) from None
                except VersionConflict:
                    # Changed (or deleted) since we read it: once more from a
                    # fresh read, where a deletion answers NOT_FOUND.
                    if attempt == 1:
                        continue
                    raise Aborted(
                        "the connection was changed concurrently; retry",
                        reason=CONNECTION_CHANGED,
                        retry_after=1.0,
                    ) from None
            self._changed("update", tenant_id, connection_id, paths)
            return updated
        raise AssertionError("unreachable")  # pragma: no cover

    async def delete(self, tenant_id: str, connection_id: str, *, actor: str) -> None:
        _check_id(connection_id)
        audit = AuditEntry(
            tenant_id=tenant_id,
            connection_id=connection_id,
            action="delete",
            actor=actor,
            at=self._clock.now(),
        )
        with port_errors():
            deleted = await self._store.delete_connection(tenant_id, connection_id, audit)
        if not deleted:
            raise _not_found(connection_id)
        self._changed("delete", tenant_id, connection_id, ())

    def _sealed(
        self, tenant_id: str, connection_id: str, plain: Mapping[str, str]
    ) -> tuple[dict[str, str], dict[str, str]]:
        """The secrets sealed for this connection, and their fingerprints."""
        sealed = {
            name: self._box.seal(value, context=secret_context(tenant_id, connection_id, name))
            for name, value in plain.items()
        }
        return sealed, {name: self._box.fingerprint(value) for name, value in plain.items()}

    def _request_fingerprint(self, fields: ConnectionFields) -> str:
        """What a create asked for, secrets only by their keyed fingerprints:
        the stored digest reveals nothing a guess could be tested against."""
        document = {
            "channel": fields.channel.value,
            "display_name": fields.display_name,
            "webhook_url": fields.webhook_url,
            "public": dict(fields.public),
            "secrets": {name: self._box.fingerprint(v) for name, v in fields.secrets.items()},
        }
        encoded = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return "sha256:" + hashlib.sha256(encoded.encode()).hexdigest()

    def _changed(
        self, action: str, tenant_id: str, connection_id: str, fields: Sequence[str]
    ) -> None:
        self._invalidate(tenant_id)
        # Field names only: never a value (secrets, but also account ids).
        log.info(
            "channel connection %s: tenant %s, connection %s, fields [%s]",
            action,
            tenant_id,
            connection_id,
            ", ".join(fields),
        )


def new_connection_id() -> str:
    return CONNECTION_ID_PREFIX + "".join(
        secrets.choice(_ID_ALPHABET) for _ in range(CONNECTION_ID_RANDOM_LENGTH)
    )


def _check_id(connection_id: str, field: str = "connection_id") -> None:
    if not connection_id:
        raise InvalidArgument.of(field, "is required")
    if not CONNECTION_ID_PATTERN.fullmatch(connection_id):
        raise InvalidArgument.of(field, 'must be "cc_" and 24 lowercase letters or digits')


def _set_paths(fields: ConnectionFields) -> tuple[str, ...]:
    """The update-mask paths of what `fields` sets (non-empty values)."""
    spec = PLATFORMS.get(fields.channel)
    paths = [name for name in ("display_name", "webhook_url") if getattr(fields, name)]
    if spec is not None:
        paths.extend(
            f"{spec.name}.{name}"
            for name in spec.fields
            if fields.public.get(name) or fields.secrets.get(name)
        )
    return tuple(paths)


def _resolved_mask(mask: Sequence[str], fields: ConnectionFields) -> tuple[str, ...]:
    """The paths an update changes: the mask's, in order and once each; an
    empty mask means every field the request sets (AIP-134)."""
    if mask:
        return tuple(dict.fromkeys(mask))
    paths = _set_paths(fields)
    if not paths:
        raise InvalidArgument.of("update_mask", "is empty and the request sets no field to change")
    return paths


def _exists(exists: ConnectionExists) -> AlreadyExists:
    return AlreadyExists(
        f"the tenant already has a connection for this account: {exists.connection_id}",
        reason=CONNECTION_EXISTS,
        metadata={"connection_id": exists.connection_id},
    )


def _not_found(connection_id: str) -> NotFound:
    # The same answer whether it does not exist or is another tenant's.
    return NotFound(
        f"channel connection {connection_id!r} not found",
        reason=CONNECTION_NOT_FOUND,
        metadata={"connection_id": connection_id},
    )


# ------------------------------------------------------------------ the cache

# Every cached answer, across tenants, is one entry; past this many the least
# recently used go, so memory stays bounded however many tenants call.
MAX_CACHED_ENTRIES = 10_000
# "No such connection" and "no connection for this platform" are kept this
# long at most: a connection made on another process is usable here soon
# (made on this one, at once: the change invalidates the tenant).
NEGATIVE_TTL_SECONDS = 5.0
# A tenant's connections for one platform are read in pages of this size.
_LOAD_PAGE = 100

_Key = tuple[str, str, str]  # (tenant, "id" | "channel", connection id | channel)
_Value = OpenedConnection | None | tuple[OpenedConnection, ...]
_Load = Callable[[], Awaitable[_Value]]


@dataclass(frozen=True, slots=True)
class _Entry:
    value: _Value
    expires: datetime


class CachedConnections:
    """ports.ConnectionDirectory over the store, secrets opened with the box.

    A connection whose secret does not open (a key taken out of
    CHANNEL_SECRETS_KEY, a tampered record) is logged as an error and
    treated as absent: its webhooks are refused and its replies fail, the
    rest of the tenant's connections work. Concurrent misses of one key
    share one store read. Store errors (StoreUnavailable) propagate.
    """

    def __init__(
        self,
        *,
        store: ConnectionStore,
        box: SecretBox,
        clock: Clock,
        ttl_seconds: float,
        max_entries: int = MAX_CACHED_ENTRIES,
    ) -> None:
        self._store = store
        self._box = box
        self._clock = clock
        self._ttl = timedelta(seconds=ttl_seconds)
        self._negative_ttl = timedelta(seconds=min(ttl_seconds, NEGATIVE_TTL_SECONDS))
        self._max_entries = max_entries
        self._entries: OrderedDict[_Key, _Entry] = OrderedDict()
        self._loading: dict[_Key, asyncio.Future[_Value]] = {}
        # Moves on every invalidation: a read begun before a change must not
        # cache what it read.
        self._generation = 0

    async def opened(self, tenant_id: str, connection_id: str) -> OpenedConnection | None:
        if not CONNECTION_ID_PATTERN.fullmatch(connection_id):
            return None  # never stored: no read, and no entry for junk ids

        async def load() -> _Value:
            found = await self._store.get_connection(tenant_id, connection_id)
            return None if found is None else self._open(found)

        value = await self._cached((tenant_id, "id", connection_id), load)
        assert value is None or isinstance(value, OpenedConnection)
        return value

    async def for_channel(
        self, tenant_id: str, channel: Channel, *, fresh: bool = False
    ) -> Sequence[OpenedConnection]:
        key: _Key = (tenant_id, "channel", channel.value)
        if fresh:
            self._entries.pop(key, None)

        async def load() -> _Value:
            opened: list[OpenedConnection] = []
            after = ""
            while True:
                page = await self._store.list_connections(
                    tenant_id, channel=channel, limit=_LOAD_PAGE, after_id=after
                )
                opened.extend(o for c in page if (o := self._open(c)) is not None)
                if len(page) < _LOAD_PAGE:
                    return tuple(opened)
                after = page[-1].connection_id

        value = await self._cached(key, load)
        assert isinstance(value, tuple)
        return value

    def invalidate(self, tenant_id: str) -> None:
        """Forget the tenant's connections (they changed in this process)."""
        self._generation += 1
        for key in [key for key in self._entries if key[0] == tenant_id]:
            del self._entries[key]
        # Reads under way began before the change: later callers start anew.
        for key in [key for key in self._loading if key[0] == tenant_id]:
            del self._loading[key]

    async def _cached(self, key: _Key, load: _Load) -> _Value:
        now = self._clock.now()
        entry = self._entries.get(key)
        if entry is not None:
            if entry.expires > now:
                self._entries.move_to_end(key)
                return entry.value
            del self._entries[key]
        pending = self._loading.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._load(key, load, self._generation))
            self._loading[key] = pending
            pending.add_done_callback(lambda done: self._forget_load(key, done))
        # Shielded: one caller giving up (a cancelled RPC) must not cancel
        # the read the others wait for.
        return await asyncio.shield(pending)

    async def _load(self, key: _Key, load: _Load, generation: int) -> _Value:
        value = await load()
        if generation == self._generation:
            empty = value is None or value == ()
            ttl = self._negative_ttl if empty else self._ttl
            self._entries[key] = _Entry(value, self._clock.now() + ttl)
            self._entries.move_to_end(key)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)
        return value

    def _forget_load(self, key: _Key, done: asyncio.Future[_Value]) -> None:
        if self._loading.get(key) is done:
            del self._loading[key]
        if not done.cancelled():
            done.exception()  # retrieved: a failed read is no "never retrieved" warning

    def _open(self, connection: ChannelConnection) -> OpenedConnection | None:
        opened: dict[str, str] = {}
        for name, sealed in connection.secrets.items():
            context = secret_context(connection.tenant_id, connection.connection_id, name)
            try:
                opened[name] = self._box.open(sealed, context=context)
            except SecretUnreadable as error:
                # The error's words name the key id, never key or secret.
                log.error(
                    "channel connection %s (tenant %s) is unusable: its %s cannot be opened: %s",
                    connection.connection_id,
                    connection.tenant_id,
                    name,
                    error,
                )
                return None
        return OpenedConnection(connection=connection, secrets=opened)

"""In-memory stand-ins for the ports, for unit tests of the core.

Each fake keeps the semantics of its port (the contract tests in
tests/integration run the store fake against the same suite as the real
stores) but nothing else: no persistence, no I/O. One section per fake.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from adapters.storage.changes import already_exists, check_change, positive_limit
from adapters.storage.connection_codec import (
    check_audit_of,
    check_changed_connection,
    check_new_connection,
)
from adapters.storage.outbox import refuse_pruned
from chat_service.domain.connections import AuditEntry, ChannelConnection
from chat_service.domain.content import MessageContent
from chat_service.domain.enums import Channel, DeliveryStatus
from chat_service.domain.events import DomainEvent, OutboxEntry
from chat_service.domain.model import Conversation, IdempotencyRecord, Message
from chat_service.domain.text import search_key
from chat_service.ports import (
    ConnectionExists,
    ConversationChange,
    ConversationCursor,
    ConversationQuery,
    DeliveryClaimant,
    DeliveryError,
    DeliveryReceipt,
    DuplicateMessage,
    EngineReply,
    EngineRequest,
    VersionConflict,
    WebhookDelivery,
)

# ------------------------------------------------------------------- store


@dataclass
class _OutboxRow:
    entry: OutboxEntry
    claimed_by: str = ""
    claimed_until: float = 0.0  # time.monotonic()
    published: bool = False
    published_at: datetime | None = None


class InMemoryStore:
    """ConversationStore in dicts. Every method first yields to the event loop
    once, as real I/O would (so concurrent callers really interleave), then
    runs without awaiting again, so each is atomic on the event loop."""

    def __init__(self) -> None:
        self._conversations: dict[str, Conversation] = {}
        self._messages: dict[tuple[str, str], Message] = {}  # (tenant, message_id)
        self._records: dict[tuple[str, str], IdempotencyRecord] = {}
        self._outbox: list[_OutboxRow] = []
        self._fences: dict[str, int] = {}  # conversation id -> highest fencing token
        self._last_position = 0  # positions are never reused, even once pruned
        self._pruned_through = 0
        # (tenant, message_id) -> (owner, until): who delivers a PENDING reply.
        self._delivery_leases: dict[tuple[str, str], tuple[str, datetime]] = {}

    async def get_conversation(self, tenant_id: str, conversation_id: str) -> Conversation | None:
        await asyncio.sleep(0)  # as real I/O would
        conversation = self._conversations.get(conversation_id)
        return conversation if conversation and conversation.tenant_id == tenant_id else None

    async def list_conversations(
        self,
        tenant_id: str,
        query: ConversationQuery,
        *,
        limit: int,
        after: ConversationCursor | None = None,
    ) -> Sequence[Conversation]:
        await asyncio.sleep(0)  # as real I/O would

        def key(c: Conversation) -> tuple[object, ...]:
            return (c.created_at, c.conversation_id)

        found = sorted(
            (c for c in self._conversations.values() if self._matches(c, tenant_id, query)),
            key=key,
            reverse=query.descending,
        )
        if after is not None:
            cursor = (after.created_at, after.conversation_id)
            found = [c for c in found if (key(c) < cursor if query.descending else key(c) > cursor)]
        return found[:limit]

    def _matches(self, c: Conversation, tenant_id: str, query: ConversationQuery) -> bool:
        needle = search_key(query.search_query)
        return (
            c.tenant_id == tenant_id
            and query.status in (None, c.status)
            and query.channel in (None, c.channel)
            and query.user_id in ("", c.user_id)
            and (query.start_time is None or c.created_at >= query.start_time)
            and (query.end_time is None or c.created_at < query.end_time)
            and (
                not needle
                or any(needle in search_key(m.content.text) for m in self._messages_of(c))
            )
        )

    def _messages_of(self, c: Conversation) -> list[Message]:
        return sorted(
            (m for m in self._messages.values() if m.conversation_id == c.conversation_id),
            key=lambda m: m.sequence,
        )

    async def list_messages(
        self,
        tenant_id: str,
        conversation_id: str,
        *,
        limit: int,
        after_sequence: int | None = None,
        descending: bool = False,
    ) -> Sequence[Message]:
        conversation = await self.get_conversation(tenant_id, conversation_id)
        found = self._messages_of(conversation) if conversation else []
        if descending:
            found.reverse()
        if after_sequence is not None:
            found = [
                m
                for m in found
                if (m.sequence < after_sequence if descending else m.sequence > after_sequence)
            ]
        return found[:limit]

    async def iter_messages(
        self,
        tenant_id: str,
        conversation_id: str,
        *,
        after_sequence: int = 0,
        through_sequence: int | None = None,
    ) -> AsyncIterator[Message]:
        conversation = await self.get_conversation(tenant_id, conversation_id)
        for m in self._messages_of(conversation) if conversation else []:
            if m.sequence > after_sequence and (
                through_sequence is None or m.sequence <= through_sequence
            ):
                yield m

    async def get_message(self, tenant_id: str, message_id: str) -> Message | None:
        await asyncio.sleep(0)  # as real I/O would
        return self._messages.get((tenant_id, message_id))

    async def get_record(self, tenant_id: str, message_id: str) -> IdempotencyRecord | None:
        await asyncio.sleep(0)  # as real I/O would
        return self._records.get((tenant_id, message_id))

    async def write(self, change: ConversationChange) -> None:
        await asyncio.sleep(0)  # as real I/O would
        # Check everything first, then apply: a refused change writes nothing.
        new = change.conversation
        check_change(change)
        stored = self._conversations.get(new.conversation_id)
        if change.expected_version == 0:
            if stored is not None:
                raise already_exists(new.conversation_id)
        elif (
            stored is None
            or stored.tenant_id != new.tenant_id
            or stored.version != change.expected_version
        ):
            raise VersionConflict(f"conversation {new.conversation_id!r} has moved on")
        fence = self._fences.get(new.conversation_id)
        token = change.fencing_token
        if token is not None and fence is not None and token < fence:
            raise VersionConflict(f"conversation {new.conversation_id!r} is fenced at {fence}")
        taken_ids = set(self._messages)
        taken_sequences = {(m.conversation_id, m.sequence) for m in self._messages.values()}
        for m in change.messages:
            key, slot = (m.tenant_id, m.message_id), (m.conversation_id, m.sequence)
            if key in taken_ids or slot in taken_sequences:
                raise DuplicateMessage(m.message_id)
            taken_ids.add(key)
            taken_sequences.add(slot)

        self._conversations[new.conversation_id] = new
        if token is not None:
            self._fences[new.conversation_id] = token
        self._messages.update(((m.tenant_id, m.message_id), m) for m in change.messages)
        self._append_events(change.events)
        if change.record is not None:
            self._records[(change.record.tenant_id, change.record.message_id)] = change.record

    async def update_delivery_status(
        self,
        tenant_id: str,
        message_id: str,
        status: DeliveryStatus,
        event: DomainEvent | None = None,
        *,
        platform_message_id: str = "",
        channel_data: Mapping[str, str | int | bool] | None = None,
    ) -> bool:
        await asyncio.sleep(0)  # as real I/O would
        message = self._messages.get((tenant_id, message_id))
        if message is None or not message.delivery_status.can_advance_to(status):
            return False
        metadata = message.channel_metadata
        if platform_message_id:
            metadata = dataclasses.replace(metadata, platform_message_id=platform_message_id)
        if channel_data:
            merged = {**metadata.additional_data, **channel_data}
            metadata = dataclasses.replace(metadata, additional_data=merged)
        self._messages[(tenant_id, message_id)] = dataclasses.replace(
            message, delivery_status=status, channel_metadata=metadata
        )
        self._delivery_leases.pop((tenant_id, message_id), None)  # any move ends it
        self._append_events(() if event is None else (event,))
        return True

    async def find_by_platform_id(
        self, tenant_id: str, channel: Channel, platform_message_id: str
    ) -> Message | None:
        await asyncio.sleep(0)  # as real I/O would
        if not platform_message_id:
            return None
        return next(
            (
                m
                for m in self._messages.values()
                if m.tenant_id == tenant_id
                and m.channel == channel
                and m.is_outbound
                and m.channel_metadata.platform_message_id == platform_message_id
            ),
            None,
        )

    async def list_pending_deliveries(
        self,
        *,
        limit: int,
        after: tuple[datetime, str] | None = None,
        claimable_by: DeliveryClaimant | None = None,
    ) -> Sequence[Message]:
        await asyncio.sleep(0)  # as real I/O would
        pending = sorted(
            (
                m
                for m in self._messages.values()
                if m.is_outbound
                and m.delivery_status is DeliveryStatus.PENDING
                and (
                    claimable_by is None
                    or self._delivery_free(
                        (m.tenant_id, m.message_id), claimable_by.owner, claimable_by.now
                    )
                )
            ),
            key=lambda m: (m.created_at, m.message_id),
        )
        if after is not None:
            pending = [m for m in pending if (m.created_at, m.message_id) > after]
        return pending[:limit]

    async def requeue_delivery(
        self, tenant_id: str, message_id: str, event: DomainEvent
    ) -> Message | None:
        await asyncio.sleep(0)  # as real I/O would
        message = self._messages.get((tenant_id, message_id))
        if message is None or message.delivery_status is not DeliveryStatus.FAILED:
            return None
        requeued = dataclasses.replace(message, delivery_status=DeliveryStatus.PENDING)
        self._messages[(tenant_id, message_id)] = requeued
        self._delivery_leases.pop((tenant_id, message_id), None)
        self._append_events((event,))
        return requeued

    async def claim_delivery(
        self, tenant_id: str, message_id: str, owner: str, *, now: datetime, lease_seconds: float
    ) -> bool:
        await asyncio.sleep(0)  # as real I/O would
        key = (tenant_id, message_id)
        message = self._messages.get(key)
        if message is None or message.delivery_status is not DeliveryStatus.PENDING:
            return False
        if not self._delivery_free(key, owner, now):
            return False
        self._delivery_leases[key] = (owner, now + timedelta(seconds=lease_seconds))
        return True

    async def release_delivery(self, tenant_id: str, message_id: str, owner: str) -> None:
        await asyncio.sleep(0)  # as real I/O would
        key = (tenant_id, message_id)
        if self._delivery_leases.get(key, ("", None))[0] == owner:
            del self._delivery_leases[key]

    def _delivery_free(self, key: tuple[str, str], owner: str, now: datetime) -> bool:
        lease = self._delivery_leases.get(key)
        return lease is None or lease[0] == owner or lease[1] <= now

    def _append_events(self, events: Sequence[DomainEvent]) -> None:
        for event in events:
            self._last_position += 1
            self._outbox.append(_OutboxRow(OutboxEntry(self._last_position, event)))

    async def claim_outbox(
        self, owner: str, *, limit: int, lease_seconds: float
    ) -> Sequence[OutboxEntry]:
        await asyncio.sleep(0)  # as real I/O would
        now = time.monotonic()
        claimable: list[_OutboxRow] = []
        for row in (row for row in self._outbox if not row.published):
            if len(claimable) == limit:
                break
            if row.claimed_by and row.claimed_by != owner and row.claimed_until > now:
                break  # another owner's: the run from the head ends here
            claimable.append(row)
        for row in claimable:
            row.claimed_by, row.claimed_until = owner, now + lease_seconds
        return [row.entry for row in claimable]

    async def mark_published(self, owner: str, positions: Sequence[int]) -> None:
        await asyncio.sleep(0)  # as real I/O would
        for row in self._outbox:
            if row.entry.position in positions and row.claimed_by == owner and not row.published:
                row.published, row.published_at = True, datetime.now(UTC)

    async def read_events(
        self, *, after_position: int, limit: int, tenant_id: str | None = None
    ) -> Sequence[OutboxEntry]:
        await asyncio.sleep(0)  # as real I/O would
        refuse_pruned(after_position, self._pruned_through)
        return [
            row.entry
            for row in self._outbox
            if row.entry.position > after_position
            and (tenant_id is None or row.entry.event.tenant_id == tenant_id)
        ][:limit]

    async def last_event_position(self) -> int:
        await asyncio.sleep(0)  # as real I/O would
        newest = self._outbox[-1].entry.position if self._outbox else 0
        return max(newest, self._pruned_through)

    async def prune_outbox(self, *, published_before: datetime, keep_last: int, limit: int) -> int:
        await asyncio.sleep(0)  # as real I/O would
        kept_from = self._last_position - keep_last  # positions up to it are beyond the count
        count = 0
        for row in self._outbox[:limit]:
            old = row.published_at is not None and row.published_at < published_before
            if not row.published or not (old or row.entry.position <= kept_from):
                break
            count += 1
        if count:
            self._pruned_through = max(self._pruned_through, self._outbox[count - 1].entry.position)
            del self._outbox[:count]
        return count

    async def close(self) -> None:
        await asyncio.sleep(0)  # as real I/O would
        return


# ------------------------------------------------------------------ engine


class ScriptedEngine:
    """Engine port: answers from a script, or fails, or stalls, as told."""

    name = "scripted"
    history_size = 20

    def __init__(self, reply: EngineReply | None = None) -> None:
        self.reply = reply
        self.failure: Exception | None = None
        self.delay = 0.0
        self.requests: list[EngineRequest] = []

    async def process(self, request: EngineRequest) -> EngineReply:
        self.requests.append(request)
        await asyncio.sleep(self.delay)  # at least one hop, as a remote call
        if self.failure is not None:
            raise self.failure
        if self.reply is not None:
            return self.reply
        return EngineReply(
            contents=(MessageContent.of_text(f"echo: {request.content.text}"),),
            state=dataclasses.replace(request.context, current_intent="echo"),
        )


# ---------------------------------------------------------- channel sender


class RecordingSender:
    """ChannelSender port: records deliveries; fails the first `failures` tries."""

    def __init__(self, *, failures: int = 0, retryable: bool = True) -> None:
        self.failures = failures
        self.retryable = retryable
        self.attempts = 0
        self.delivered: list[Message] = []

    async def send(self, conversation: Conversation, message: Message) -> DeliveryReceipt:
        self.attempts += 1
        if self.failures:
            self.failures -= 1
            raise DeliveryError("platform said no", retryable=self.retryable)
        self.delivered.append(message)
        return DeliveryReceipt(platform_message_id=f"p-{message.message_id}")


# ---------------------------------------------------------- event publisher


class RecordingPublisher:
    """EventPublisher port: keeps what was published; can be made to fail."""

    def __init__(self) -> None:
        self.published: list[OutboxEntry] = []
        self.failing = False

    async def publish(self, entries: Sequence[OutboxEntry]) -> None:
        if self.failing:
            raise ConnectionError("broker down")
        self.published.extend(entries)

    async def close(self) -> None:
        return None


# -------------------------------------------------------------------- clock


class SteppingClock:
    """Clock port: starts at `start`, moves one millisecond per reading."""

    def __init__(self, start: datetime) -> None:
        self._now = start

    def now(self) -> datetime:
        self._now += timedelta(milliseconds=1)
        return self._now

    def advance(self, delta: timedelta) -> None:
        """Jump ahead (a TTL passing, without waiting for it)."""
        self._now += delta


# ------------------------------------------------------------ channel store


@dataclass
class _InboxRow:
    delivery: WebhookDelivery  # with its position and attempts
    not_before: datetime | None = None
    claimed_by: str = ""
    claimed_until: datetime | None = None
    processed_at: datetime | None = None
    error: str = ""
    dead: bool = False


class InMemoryChannelStore:
    """ConnectionStore and WebhookInbox ports in dicts (the contract tests run
    it beside the SQLite and MongoDB ones). Like InMemoryStore, each method
    yields to the event loop once, then runs without awaiting again."""

    def __init__(self) -> None:
        self._connections: dict[tuple[str, str], ChannelConnection] = {}
        self._audit: list[AuditEntry] = []  # in the order written
        self._inbox: dict[int, _InboxRow] = {}
        self._last_position = 0
        # (tenant, connection, user) -> (opted out, as of)
        self._opt_outs: dict[tuple[str, str, str], tuple[bool, datetime]] = {}

    async def create_connection(
        self, connection: ChannelConnection, audit: AuditEntry
    ) -> ChannelConnection:
        await asyncio.sleep(0)  # as real I/O would
        check_new_connection(connection, audit)
        tenant = connection.tenant_id
        if connection.request_id:
            for existing in self._connections.values():
                if (existing.tenant_id, existing.request_id) == (tenant, connection.request_id):
                    return existing
        if (tenant, connection.connection_id) in self._connections:
            raise ConnectionExists(connection.connection_id)
        self._refuse_taken_account(connection)
        self._connections[(tenant, connection.connection_id)] = connection
        self._audit.append(audit)
        return connection

    async def get_connection(self, tenant_id: str, connection_id: str) -> ChannelConnection | None:
        await asyncio.sleep(0)  # as real I/O would
        return self._connections.get((tenant_id, connection_id))

    async def find_connection(
        self, tenant_id: str, channel: Channel, account_id: str
    ) -> ChannelConnection | None:
        await asyncio.sleep(0)  # as real I/O would
        for connection in self._connections.values():
            if (connection.tenant_id, connection.channel, connection.account_id) == (
                tenant_id,
                channel,
                account_id,
            ):
                return connection
        return None

    async def list_connections(
        self, tenant_id: str, *, channel: Channel | None, limit: int, after_id: str = ""
    ) -> Sequence[ChannelConnection]:
        await asyncio.sleep(0)  # as real I/O would
        found = sorted(
            (
                c
                for c in self._connections.values()
                if c.tenant_id == tenant_id
                and channel in (None, c.channel)
                and c.connection_id > after_id
            ),
            key=lambda c: c.connection_id,
        )
        return found[: positive_limit(limit)]

    async def update_connection(self, connection: ChannelConnection, audit: AuditEntry) -> None:
        await asyncio.sleep(0)  # as real I/O would
        check_changed_connection(connection, audit)
        key = (connection.tenant_id, connection.connection_id)
        stored = self._connections.get(key)
        if stored is None or stored.version != connection.version - 1:
            raise VersionConflict(
                f"connection {connection.connection_id!r} is not at version "
                f"{connection.version - 1}"
            )
        self._refuse_taken_account(connection)
        self._connections[key] = connection
        self._audit.append(audit)

    async def delete_connection(
        self, tenant_id: str, connection_id: str, audit: AuditEntry
    ) -> bool:
        await asyncio.sleep(0)  # as real I/O would
        check_audit_of(tenant_id, connection_id, audit)
        if self._connections.pop((tenant_id, connection_id), None) is None:
            return False
        self._audit.append(audit)
        return True

    async def list_audit(
        self, tenant_id: str, *, limit: int, connection_id: str = ""
    ) -> Sequence[AuditEntry]:
        await asyncio.sleep(0)  # as real I/O would
        written = [
            (entry.at, index, entry)
            for index, entry in enumerate(self._audit)
            if entry.tenant_id == tenant_id and connection_id in ("", entry.connection_id)
        ]
        written.sort(key=lambda item: item[:2], reverse=True)
        return [entry for _, _, entry in written[: positive_limit(limit)]]

    async def set_opt_out(
        self, tenant_id: str, connection_id: str, user_id: str, opted_out: bool, at: datetime
    ) -> bool:
        await asyncio.sleep(0)  # as real I/O would
        key = (tenant_id, connection_id, user_id)
        stored = self._opt_outs.get(key)
        if stored is not None and stored[1] > at:
            return False
        self._opt_outs[key] = (opted_out, at)
        return True

    async def is_opted_out(self, tenant_id: str, connection_id: str, user_id: str) -> bool:
        await asyncio.sleep(0)  # as real I/O would
        stored = self._opt_outs.get((tenant_id, connection_id, user_id))
        return stored is not None and stored[0]

    def _refuse_taken_account(self, connection: ChannelConnection) -> None:
        for other in self._connections.values():
            if (
                other.tenant_id == connection.tenant_id
                and other.channel == connection.channel
                and other.account_id == connection.account_id
                and other.connection_id != connection.connection_id
            ):
                raise ConnectionExists(other.connection_id)

    # ------------------------------------------------------------ inbox

    async def put(self, delivery: WebhookDelivery) -> bool:
        await asyncio.sleep(0)  # as real I/O would
        key = (delivery.tenant_id, delivery.channel, delivery.dedup_key)
        for row in self._inbox.values():
            stored = row.delivery
            if (stored.tenant_id, stored.channel, stored.dedup_key) == key:
                return False
        self._last_position += 1
        position = self._last_position
        self._inbox[position] = _InboxRow(
            dataclasses.replace(delivery, position=position, attempts=0)
        )
        return True

    async def claim(
        self, owner: str, *, now: datetime, limit: int, lease_seconds: float
    ) -> Sequence[WebhookDelivery]:
        await asyncio.sleep(0)  # as real I/O would
        limit = positive_limit(limit)
        claimed: list[WebhookDelivery] = []
        for position in sorted(self._inbox):
            if len(claimed) == limit:
                break
            row = self._inbox[position]
            due = row.not_before is None or row.not_before <= now
            free = (
                row.claimed_by in ("", owner)
                or row.claimed_until is None
                or row.claimed_until <= now
            )
            if row.processed_at is None and due and free:
                row.claimed_by = owner
                row.claimed_until = now + timedelta(seconds=lease_seconds)
                row.delivery = dataclasses.replace(row.delivery, attempts=row.delivery.attempts + 1)
                claimed.append(row.delivery)
        return claimed

    async def finish(self, owner: str, position: int, *, now: datetime) -> None:
        await asyncio.sleep(0)  # as real I/O would
        row = self._held(owner, position)
        if row is not None:
            row.processed_at = now
            row.claimed_by, row.claimed_until = "", None

    async def retry_later(
        self, owner: str, position: int, *, not_before: datetime, error: str
    ) -> None:
        await asyncio.sleep(0)  # as real I/O would
        row = self._held(owner, position)
        if row is not None:
            row.not_before, row.error = not_before, error
            row.claimed_by, row.claimed_until = "", None

    async def dead_letter(self, owner: str, position: int, *, now: datetime, error: str) -> None:
        await asyncio.sleep(0)  # as real I/O would
        row = self._held(owner, position)
        if row is not None:
            row.processed_at, row.error, row.dead = now, error, True
            row.claimed_by, row.claimed_until = "", None

    async def prune(self, *, processed_before: datetime, limit: int) -> int:
        await asyncio.sleep(0)  # as real I/O would
        processed = sorted(
            (row.processed_at, position)
            for position, row in self._inbox.items()
            if row.processed_at is not None and row.processed_at < processed_before
        )
        for _, position in processed[: positive_limit(limit)]:
            del self._inbox[position]
        return min(len(processed), limit)

    def dead_letters(self) -> list[tuple[WebhookDelivery, str]]:
        """For tests: the deliveries given up on, with their errors."""
        return [(row.delivery, row.error) for row in self._inbox.values() if row.dead]

    def _held(self, owner: str, position: int) -> _InboxRow | None:
        row = self._inbox.get(position)
        if row is None or row.processed_at is not None or row.claimed_by != owner:
            return None
        return row

"""In-memory stand-ins for the ports, for unit tests of the core.

Each fake keeps the semantics of its port (the contract tests in
tests/integration run the store fake against the same suite as the real
stores) but nothing else: no persistence, no I/O. One section per fake.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from adapters.storage.changes import already_exists, check_change
from adapters.storage.outbox import refuse_pruned
from chat_service.domain.content import MessageContent
from chat_service.domain.enums import DeliveryStatus
from chat_service.domain.events import DomainEvent, OutboxEntry
from chat_service.domain.model import Conversation, IdempotencyRecord, Message
from chat_service.domain.text import search_key
from chat_service.ports import (
    ConversationChange,
    ConversationCursor,
    ConversationQuery,
    DeliveryError,
    DeliveryReceipt,
    DuplicateMessage,
    EngineReply,
    EngineRequest,
    VersionConflict,
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
    ) -> bool:
        await asyncio.sleep(0)  # as real I/O would
        message = self._messages.get((tenant_id, message_id))
        if message is None or not message.delivery_status.can_advance_to(status):
            return False
        self._messages[(tenant_id, message_id)] = dataclasses.replace(
            message, delivery_status=status
        )
        self._append_events(() if event is None else (event,))
        return True

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

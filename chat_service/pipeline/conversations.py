"""Reading conversations and messages, and changing a conversation's status."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Generic, TypeVar

from chat_service.domain.enums import ConversationStatus
from chat_service.domain.errors import FieldViolation, InvalidArgument
from chat_service.domain.events import status_changed
from chat_service.domain.identifiers import (
    MAX_USER_ID_LENGTH,
    conversation_id_problem,
    identifier_problem,
)
from chat_service.domain.model import Conversation, Message, conversation_of
from chat_service.domain.text import normalize_search_query, search_query_problem
from chat_service.pipeline.errors import port_errors
from chat_service.pipeline.page_tokens import PageTokens, is_position, query_digest
from chat_service.pipeline.writer import ConversationWriter
from chat_service.ports import (
    Clock,
    ConversationChange,
    ConversationCursor,
    ConversationLocks,
    ConversationQuery,
    ConversationStore,
)

CONVERSATIONS_DEFAULT_PAGE = 20
CONVERSATIONS_MAX_PAGE = 100
MESSAGES_DEFAULT_PAGE = 50
MESSAGES_MAX_PAGE = 1000
MAX_STATUS_REASON = 500

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: Sequence[T]
    next_page_token: str


def _page_size(size: int, default: int, maximum: int, violations: list[FieldViolation]) -> int:
    if size < 0:
        violations.append(FieldViolation("page_size", f"must not be negative, got {size}"))
    return default if size <= 0 else min(size, maximum)


def _id_violation(conversation_id: str) -> FieldViolation | None:
    if not conversation_id:
        return FieldViolation("conversation_id", "is required")
    if problem := conversation_id_problem(conversation_id):
        return FieldViolation("conversation_id", problem)
    return None


def _require_id(conversation_id: str) -> None:
    if violation := _id_violation(conversation_id):
        raise InvalidArgument([violation], f"{violation.field}: {violation.description}")


class ConversationQueries:
    def __init__(self, store: ConversationStore, *, tokens: PageTokens | None = None) -> None:
        self._store = store
        # Production passes the deployment's key (bootstrap); a random one
        # serves a single object's life (tests).
        self._tokens = tokens or PageTokens.ephemeral()

    async def get(self, tenant_id: str, conversation_id: str) -> Conversation:
        _require_id(conversation_id)
        with port_errors():
            found = await self._store.get_conversation(tenant_id, conversation_id)
        return conversation_of(tenant_id, conversation_id, found)

    async def list_conversations(
        self, tenant_id: str, query: ConversationQuery, *, page_size: int, page_token: str
    ) -> Page[Conversation]:
        violations: list[FieldViolation] = []
        limit = _page_size(
            page_size, CONVERSATIONS_DEFAULT_PAGE, CONVERSATIONS_MAX_PAGE, violations
        )
        if problem := identifier_problem(query.user_id, maximum=MAX_USER_ID_LENGTH):
            violations.append(FieldViolation("user_id", problem))
        if problem := search_query_problem(query.search_query):
            violations.append(FieldViolation("search_query", problem))
        else:  # searched as stored text is stored: NFC, "\n" line breaks
            query = replace(query, search_query=normalize_search_query(query.search_query))
        if query.start_time and query.end_time and query.end_time <= query.start_time:
            violations.append(FieldViolation("end_time", "must be after start_time"))
        if violations:
            raise InvalidArgument(violations)
        digest = query_digest("conversations", tenant_id, query)
        after = None
        if page_token:
            position = self._tokens.decode(page_token, digest=digest)
            after = _cursor_from(position)
        with port_errors():
            items = await self._store.list_conversations(
                tenant_id, query, limit=limit + 1, after=after
            )
        token = ""
        if len(items) > limit:
            items = items[:limit]
            last = items[-1]
            token = self._tokens.encode(
                {"t": last.created_at.isoformat(), "id": last.conversation_id}, digest=digest
            )
        return Page(items, token)

    async def list_messages(
        self,
        tenant_id: str,
        conversation_id: str,
        *,
        page_size: int,
        page_token: str,
        descending: bool,
    ) -> Page[Message]:
        _require_id(conversation_id)
        violations: list[FieldViolation] = []
        limit = _page_size(page_size, MESSAGES_DEFAULT_PAGE, MESSAGES_MAX_PAGE, violations)
        if violations:
            raise InvalidArgument(violations)
        digest = query_digest("messages", tenant_id, conversation_id, descending)
        after: int | None = None
        if page_token:
            sequence = self._tokens.decode(page_token, digest=digest).get("s")
            if not is_position(sequence):
                raise InvalidArgument.of("page_token", "is not a page token this service issued")
            after = sequence
        await self.get(tenant_id, conversation_id)  # NOT_FOUND before an empty page
        with port_errors():
            items = await self._store.list_messages(
                tenant_id,
                conversation_id,
                limit=limit + 1,
                after_sequence=after,
                descending=descending,
            )
        token = ""
        if len(items) > limit:
            items = items[:limit]
            token = self._tokens.encode({"s": items[-1].sequence}, digest=digest)
        return Page(items, token)


def _cursor_from(position: object) -> ConversationCursor:
    try:
        assert isinstance(position, dict)
        created = datetime.fromisoformat(position["t"])
        conversation_id = position["id"]
        if (
            not isinstance(conversation_id, str)
            or conversation_id_problem(conversation_id)
            or created.tzinfo is None
        ):
            raise ValueError
    except (AssertionError, KeyError, TypeError, ValueError):
        raise InvalidArgument.of("page_token", "is not a page token this service issued") from None
    return ConversationCursor(created_at=created, conversation_id=conversation_id)


class UpdateConversationStatus:
    def __init__(
        self,
        *,
        store: ConversationStore,
        writer: ConversationWriter,
        locks: ConversationLocks,
        clock: Clock,
        lock_timeout: float,
    ) -> None:
        self._store = store
        self._writer = writer
        self._locks = locks
        self._clock = clock
        self._lock_timeout = lock_timeout

    async def __call__(
        self,
        tenant_id: str,
        conversation_id: str,
        status: ConversationStatus | None,
        reason: str = "",
    ) -> Conversation:
        violations = []
        if violation := _id_violation(conversation_id):
            violations.append(violation)
        if status is None:
            violations.append(FieldViolation("status", "is required"))
        if len(reason) > MAX_STATUS_REASON:
            violations.append(
                FieldViolation("reason", f"must be at most {MAX_STATUS_REASON} characters")
            )
        if violations:
            raise InvalidArgument(violations)
        assert status is not None
        with port_errors():
            async with self._locks.hold(
                tenant_id, conversation_id, timeout=self._lock_timeout
            ) as lease:
                found = await self._store.get_conversation(tenant_id, conversation_id)
                conversation = conversation_of(tenant_id, conversation_id, found)
                if conversation.status is status:
                    return conversation  # idempotent: nothing to write
                now = self._clock.now()
                updated = conversation.moved_to(status, reason=reason, at=now)
                await self._writer.write(
                    ConversationChange(
                        conversation=updated,
                        expected_version=conversation.version,
                        events=(status_changed(updated, conversation.status, now, reason),),
                        fencing_token=lease.fencing_token,
                    )
                )
                return updated

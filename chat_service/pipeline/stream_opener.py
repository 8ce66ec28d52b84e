"""Opening StreamConversation streams: the `open` frame checked, the
conversation joined or started, the tenant's stream cap kept, and every
open stream ended when the server drains.

A stream listens on the conversation's live topic before it reads the
conversation (see conversation_stream.py, which holds the stream itself).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace

from chat_service.domain.enums import Channel
from chat_service.domain.errors import ChatError, FieldViolation, InvalidArgument
from chat_service.domain.events import EventType, conversation_event
from chat_service.domain.identifiers import (
    MAX_SESSION_ID_LENGTH,
    MAX_USER_ID_LENGTH,
    conversation_id_problem,
    identifier_problem,
)
from chat_service.domain.model import Conversation, conversation_of
from chat_service.pipeline.conversation_stream import (
    ConversationStream,
    EventKind,
    StreamServices,
)
from chat_service.pipeline.errors import port_errors
from chat_service.pipeline.stream_limits import TenantSlots
from chat_service.ports import ConversationChange

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StreamOpenRequest:
    conversation_id: str = ""
    user_id: str = ""
    channel: Channel | None = None
    session_id: str = ""
    resume_after: int | None = None
    # The live events the stream carries; empty: every kind.
    event_kinds: frozenset[EventKind] = frozenset()
    # Leave out the echo of the client's own messages (their acks answer them).
    omit_own_messages: bool = False


class ConversationStreams:
    """Opens streams, and ends them all when the server drains."""

    def __init__(self, services: StreamServices) -> None:
        self._services = services
        self._open: set[ConversationStream] = set()
        self._slots = TenantSlots(
            services.max_per_tenant, kind="streams", reason="TOO_MANY_STREAMS"
        )
        self._draining: Callable[[], ChatError] | None = None

    @property
    def open_count(self) -> int:
        return len(self._open)

    @property
    def first_frame_timeout(self) -> float:
        return self._services.first_frame_timeout

    async def open(
        self,
        tenant_id: str,
        request: StreamOpenRequest,
        *,
        abandon: Callable[[], object] = lambda: None,
        valid_until: float | None = None,
    ) -> ConversationStream:
        """`abandon` ends the call without a status, for a client that stopped
        reading (see conversation_stream); the stream ends with
        UNAUTHENTICATED once the wall clock passes `valid_until` (the token's
        expiry)."""
        _validate_open(request)
        release = self._slots.take(tenant_id)
        conversation_id = request.conversation_id or str(uuid.uuid4())

        def closed(stream: ConversationStream) -> None:
            release()
            self._open.discard(stream)

        try:
            stream = ConversationStream(
                self._services,
                tenant_id,
                conversation_id,
                request.resume_after,
                on_close=closed,
                abandon=abandon,
                event_kinds=request.event_kinds,
                omit_own=request.omit_own_messages,
            )
        except BaseException:
            release()
            raise
        try:
            # Listening must be in effect before the conversation is read, or
            # a message stored in between would reach neither.
            try:
                async with asyncio.timeout(self._services.subscribe_timeout):
                    await self._services.bus.synced()
            except TimeoutError:
                log.warning("stream %s opens before its subscription is confirmed", stream.id)
            stream.start(await self._conversation_for(tenant_id, conversation_id, request))
        except BaseException:
            stream.close()
            raise
        self._open.add(stream)
        stream.expire_at(valid_until)
        if self._draining is not None:  # it opened while the server drains
            stream.fail(self._draining(), resumable=True)
        return stream

    def close_all(self, make_error: Callable[[], ChatError]) -> None:
        """End every open stream, and any opened from now on, with an error of
        `make_error` (each its own: it gets the stream's resume position)."""
        self._draining = make_error
        for stream in tuple(self._open):
            stream.fail(make_error(), resumable=True)

    async def _conversation_for(
        self, tenant_id: str, conversation_id: str, request: StreamOpenRequest
    ) -> Conversation:
        if not request.conversation_id:
            return await self._start(tenant_id, conversation_id, request)
        with port_errors():
            found = await self._services.store.get_conversation(tenant_id, conversation_id)
        conversation = conversation_of(tenant_id, conversation_id, found)
        # Joining to read: a closed conversation can be watched; its own
        # user's stream only (the channel is the conversation's).
        conversation.check_participant(user_id=request.user_id, field_prefix="open.")
        if request.resume_after is not None and request.resume_after > conversation.last_sequence:
            raise InvalidArgument.of(
                "open.resume_after_sequence",
                f"is past the conversation's last sequence ({conversation.last_sequence})",
            )
        return conversation

    async def _start(
        self, tenant_id: str, conversation_id: str, request: StreamOpenRequest
    ) -> Conversation:
        """A new conversation, stored before its first message (which comes
        on the stream, as SendMessage)."""
        assert request.channel is not None  # validated
        now = self._services.clock.now()
        new = Conversation.start(
            conversation_id=conversation_id,
            tenant_id=tenant_id,
            user_id=request.user_id,
            channel=request.channel,
            at=now,
            session_id=request.session_id,
        )
        conversation = replace(new, version=1)
        started = conversation_event(EventType.CONVERSATION_STARTED, conversation, now)
        with port_errors():
            await self._services.writer.write(
                ConversationChange(conversation, expected_version=new.version, events=(started,))
            )
        return conversation


def _validate_open(request: StreamOpenRequest) -> None:
    if violations := open_violations(request):
        raise InvalidArgument(violations)


def open_violations(request: StreamOpenRequest) -> list[FieldViolation]:
    """What is wrong with an `open` frame (for the gRPC layer to report with
    what it found mapping the frame, all in one status)."""
    violations = []
    if request.conversation_id and (problem := conversation_id_problem(request.conversation_id)):
        violations.append(FieldViolation("open.conversation_id", problem))
    if request.resume_after is not None and request.resume_after < 0:
        violations.append(FieldViolation("open.resume_after_sequence", "must not be negative"))
    if problem := identifier_problem(request.user_id, maximum=MAX_USER_ID_LENGTH):
        violations.append(FieldViolation("open.user_id", problem))
    if problem := identifier_problem(request.session_id, maximum=MAX_SESSION_ID_LENGTH):
        violations.append(FieldViolation("open.session_id", problem))
    if not request.conversation_id:
        if not request.user_id:
            violations.append(FieldViolation("open.user_id", "is required to start a conversation"))
        if request.channel is None:
            violations.append(FieldViolation("open.channel", "is required to start a conversation"))
        if request.resume_after is not None:
            violations.append(
                FieldViolation("open.resume_after_sequence", "needs a conversation_id")
            )
    return violations

"""SendMessage: one end-user message in, the bot's reply stored and on its way out.

The steps of DESIGN.md's pipeline (authentication and the tenant's rate
limit happen at the edge, before this use case runs):

  validate and normalize -> claim the message id -> take the conversation's
  lock -> load or create the conversation -> store the inbound message with
  its events -> ask the engine (fallback on timeout or error) -> format the
  reply for the channel -> store the replies, the new state, their events and
  the idempotency record -> hand the replies to delivery -> release.

Retries are safe at every point. A retry of a finished call finds the
idempotency record and returns the stored result. A retry after a crash
between the two writes finds the inbound message without a record and
resumes from the engine call. Reply ids derive from the inbound id, so even
two processes racing on one message cannot store two sets of replies.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, replace
from functools import partial

from chat_service.domain.channels import format_for_channel
from chat_service.domain.content import MessageContent
from chat_service.domain.enums import Channel, ConversationStatus, DeliveryStatus, MessageRole
from chat_service.domain.errors import (
    Aborted,
    FailedPrecondition,
    InvalidArgument,
    conversation_not_found,
)
from chat_service.domain.events import DomainEvent, EventType
from chat_service.domain.fingerprint import request_fingerprint
from chat_service.domain.model import (
    Conversation,
    IdempotencyRecord,
    InboundMessage,
    Message,
    ProcessingHints,
    SendResult,
)
from chat_service.domain.validation import validate_content, validate_inbound
from chat_service.pipeline.delivery import DeliveryQueue
from chat_service.pipeline.errors import port_errors
from chat_service.pipeline.events import conversation_event, message_event, status_changed
from chat_service.pipeline.writer import ConversationWriter
from chat_service.ports import (
    Clock,
    ConversationChange,
    ConversationLocks,
    ConversationStore,
    CoordinationUnavailable,
    DuplicateMessage,
    Engine,
    EngineFailure,
    EngineReply,
    EngineRequest,
    IdempotencyGuard,
    LockLease,
    SessionCache,
    VersionConflict,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SendSettings:
    engine_timeout: float
    lock_timeout: float
    fallback_text: str


@dataclass(frozen=True, slots=True)
class SendOutcome:
    result: SendResult
    # True when the result is the stored answer to an earlier call.
    replayed: bool


# An engine reply holding more is refused (fallback): a bound on what one
# message can make the service store and deliver.
MAX_REPLY_CONTENTS = 10
MAX_REPLY_PARTS = 30  # after adapting and splitting for the channel


@dataclass(slots=True)
class _Call:
    """One call's progress, shared by its caller and the task doing the work."""

    # Set just before the inbound message's write (or a resumed answer)
    # starts: from there on the work finishes even if the caller leaves.
    committed: bool = False
    abandoned: bool = False  # the caller left (cancelled) before the end


def reply_message_id(inbound_message_id: str, index: int) -> str:
    # "/" is outside the client id alphabet, so no client id can collide.
    return f"{inbound_message_id}/reply-{index + 1}"


class SendMessage:
    def __init__(
        self,
        *,
        store: ConversationStore,
        writer: ConversationWriter,
        locks: ConversationLocks,
        idempotency: IdempotencyGuard,
        engine: Engine,
        delivery: DeliveryQueue,
        sessions: SessionCache,
        clock: Clock,
        settings: SendSettings,
        new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
    ) -> None:
        self._store = store
        self._writer = writer
        self._locks = locks
        self._idempotency = idempotency
        self._engine = engine
        self._delivery = delivery
        self._sessions = sessions
        self._clock = clock
        self._settings = settings
        self._new_id = new_id
        self._running: set[asyncio.Task[SendOutcome]] = set()

    async def __call__(self, inbound: InboundMessage, *, field_prefix: str = "") -> SendOutcome:
        """Handles one message. The work runs in a task of this object's: a
        caller that leaves (a deadline, a cancelled call) stops it only before
        the inbound message's write starts. What is committed finishes (the
        reply is asked for, stored and handed to delivery), so that a retry
        finds the whole result instead of a message left unanswered."""
        msg = validate_inbound(inbound, field_prefix=field_prefix)
        if not msg.message_id:
            msg = replace(msg, message_id=self._new_id())
        call = _Call()
        task = asyncio.create_task(
            self._send(msg, field_prefix, call), name=f"send message {msg.message_id}"
        )
        self._running.add(task)
        task.add_done_callback(partial(self._finished, call))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            call.abandoned = True
            if not call.committed:
                task.cancel()
            raise

    @property
    def running(self) -> int:
        """Calls still being worked on (their callers may have left)."""
        return len(self._running)

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no call is being worked on; False on timeout."""
        try:
            async with asyncio.timeout(timeout):
                while self._running:
                    await asyncio.wait(set(self._running))
        except TimeoutError:
            return False
        return True

    async def close(self, timeout: float) -> None:
        """At shutdown: let the calls in progress finish within `timeout`, then
        cancel the rest (a retry resumes a committed message: see _resume)."""
        if not await self.wait_idle(timeout):
            for task in list(self._running):
                task.cancel()
            await asyncio.gather(*self._running, return_exceptions=True)

    def _finished(self, call: _Call, task: asyncio.Task[SendOutcome]) -> None:
        self._running.discard(task)
        if task.cancelled():
            return
        error = task.exception()  # retrieved here too, for when nobody awaits it
        if error is not None and call.abandoned:
            log.warning("message %s (its caller left) was not finished: %r", task.get_name(), error)

    async def _send(self, msg: InboundMessage, field_prefix: str, call: _Call) -> SendOutcome:
        fingerprint = request_fingerprint(msg)
        timeout = self._settings.lock_timeout
        with port_errors():
            async with self._idempotency.claim(msg.tenant_id, msg.message_id, timeout=timeout):
                # A record is only ever written with or after its message, so
                # an unknown message id (the usual case) needs no second read.
                stored = await self._store.get_message(msg.tenant_id, msg.message_id)
                if stored is not None:
                    replay = await self._stored_result(msg, fingerprint, field_prefix)
                    if replay is not None:
                        return SendOutcome(replay, replayed=True)
                    if stored.fingerprint != fingerprint:
                        raise _reused_id(field_prefix)
                async with AsyncExitStack() as locks:
                    lease: LockLease
                    if stored is None and not msg.conversation_id and msg.session_id:
                        # The session's messages are resolved one at a time,
                        # so they cannot each start a conversation.
                        await locks.enter_async_context(
                            self._locks.hold(
                                msg.tenant_id, f"session/{msg.session_id}", timeout=timeout
                            )
                        )
                        conversation_id, lease = await locks.enter_async_context(
                            self._hold_session_conversation(msg, timeout)
                        )
                    else:
                        if stored is not None:
                            conversation_id = stored.conversation_id
                        else:
                            conversation_id = msg.conversation_id or self._new_id()
                        lease = await locks.enter_async_context(
                            self._locks.hold(msg.tenant_id, conversation_id, timeout=timeout)
                        )
                    fence = lease.fencing_token
                    if stored is None:
                        return await self._process_new(
                            msg, conversation_id, fingerprint, field_prefix, fence, call
                        )
                    return await self._resume(msg, stored, field_prefix, fence, call)

    async def _stored_result(
        self, msg: InboundMessage, fingerprint: str, field_prefix: str
    ) -> SendResult | None:
        record = await self._store.get_record(msg.tenant_id, msg.message_id)
        if record is None:
            return None
        if record.fingerprint != fingerprint:
            raise _reused_id(field_prefix)
        return record.result

    async def _process_new(
        self,
        msg: InboundMessage,
        conversation_id: str,
        fingerprint: str,
        field_prefix: str,
        fence: int,
        call: _Call,
    ) -> SendOutcome:
        conversation = await self._load_or_create(msg, conversation_id, field_prefix)
        now = self._clock.now()
        hints = msg.processing_hints
        events: list[DomainEvent] = []
        if conversation.version == 0:
            events.append(conversation_event(EventType.CONVERSATION_STARTED, conversation, now))
        inbound = Message(
            message_id=msg.message_id,
            tenant_id=msg.tenant_id,
            conversation_id=conversation.conversation_id,
            sequence=conversation.last_sequence + 1,
            role=MessageRole.USER,
            channel=conversation.channel,
            user_id=conversation.user_id,
            content=msg.content,
            created_at=now,
            delivery_status=DeliveryStatus.SENT,
            client_time=msg.timestamp,
            channel_metadata=msg.channel_metadata,
            fingerprint=fingerprint,
        )
        updated = replace(
            conversation,
            last_sequence=inbound.sequence,
            updated_at=now,
            version=conversation.version + 1,
        )
        events.append(message_event(EventType.MESSAGE_RECEIVED, inbound, updated.status))
        if hints.require_human_review and _may_escalate(updated):
            previous = updated.status
            updated = replace(updated, status=ConversationStatus.ESCALATED)
            events.append(status_changed(updated, previous, now, "require_human_review"))

        automate = (
            updated.status is not ConversationStatus.ESCALATED and not hints.bypass_automation
        )
        record = None
        if not automate:
            # Nobody answers: the inbound write is the whole call, record included.
            result = SendResult(
                message_id=inbound.message_id,
                conversation_id=updated.conversation_id,
                sequence=inbound.sequence,
                state=updated.state,
            )
            record = IdempotencyRecord(msg.tenant_id, msg.message_id, fingerprint, result, now)
        change = ConversationChange(
            conversation=updated,
            expected_version=conversation.version,
            messages=(inbound,),
            events=tuple(events),
            record=record,
            fencing_token=fence,
        )
        call.committed = True  # a write once started may apply: see it through
        try:
            await self._writer.write(change)
            if msg.session_id:
                await self._remember_session(updated, msg.session_id)
        except DuplicateMessage:
            # Another process stored this id meanwhile (its claim outlived
            # ours); its result wins if it is complete.
            replay = await self._stored_result(msg, fingerprint, field_prefix)
            if replay is not None:
                return SendOutcome(replay, replayed=True)
            raise Aborted(
                "this message is being processed by another request; retry later",
                reason="MESSAGE_IN_PROGRESS",
                retry_after=1.0,
            ) from None
        if record is not None:
            return SendOutcome(record.result, replayed=False)
        result = await self._answer(updated, inbound, hints, fence)
        return SendOutcome(result, replayed=False)

    async def _resume(
        self, msg: InboundMessage, inbound: Message, field_prefix: str, fence: int, call: _Call
    ) -> SendOutcome:
        """The inbound message is stored but was never answered (a crash or a
        lost store between the two writes): answer it now."""
        replay = await self._stored_result(msg, inbound.fingerprint, field_prefix)
        if replay is not None:  # finished while we waited for the lock
            return SendOutcome(replay, replayed=True)
        conversation = await self._store.get_conversation(msg.tenant_id, inbound.conversation_id)
        if conversation is None:  # cannot happen: both were written together
            raise conversation_not_found(inbound.conversation_id)
        # A retry so late that the record expired (stores keep records for
        # days, messages for good): the stored replies make the result.
        replies = await self._stored_replies(conversation, inbound)
        hints = msg.processing_hints
        if (
            replies
            or hints.bypass_automation
            or hints.require_human_review
            or conversation.status is ConversationStatus.ESCALATED
        ):
            return SendOutcome(
                SendResult(
                    message_id=inbound.message_id,
                    conversation_id=conversation.conversation_id,
                    sequence=inbound.sequence,
                    state=conversation.state,
                    replies=tuple(replies),
                    response=replies[0].content if replies else None,
                    engine="replay" if replies else "none",
                ),
                replayed=True,
            )
        if conversation.last_sequence != inbound.sequence:
            # The conversation went on meanwhile: an answer now would land
            # after later messages. It stays unanswered.
            log.info("message %s was overtaken; left unanswered", inbound.message_id)
            return SendOutcome(
                SendResult(
                    message_id=inbound.message_id,
                    conversation_id=conversation.conversation_id,
                    sequence=inbound.sequence,
                    state=conversation.state,
                ),
                replayed=True,
            )
        log.info("resuming unanswered message %s", inbound.message_id)
        call.committed = True
        return SendOutcome(
            await self._answer(conversation, inbound, msg.processing_hints, fence), replayed=False
        )

    async def _stored_replies(self, conversation: Conversation, inbound: Message) -> list[Message]:
        """Replies already stored for `inbound`, found by their derived ids."""
        replies: list[Message] = []
        while len(replies) < MAX_REPLY_PARTS:
            found = await self._store.get_message(
                conversation.tenant_id, reply_message_id(inbound.message_id, len(replies))
            )
            if found is None:
                break
            replies.append(found)
        return replies

    @asynccontextmanager
    async def _hold_session_conversation(
        self, msg: InboundMessage, timeout: float
    ) -> AsyncIterator[tuple[str, LockLease]]:
        """Holds the lock of the conversation a session message goes to: the
        session's, if it can take the message (checked under its lock, so a
        close that came first is seen), else a new one. Entered under the
        session's lock, which every message that could change the answer
        also takes."""
        chosen = await self._session_conversation_id(msg)
        if chosen is not None:
            async with self._locks.hold(msg.tenant_id, chosen, timeout=timeout) as lease:
                found = await self._store.get_conversation(msg.tenant_id, chosen)
                if found is not None and found.continues_session(msg.user_id, msg.channel):
                    yield chosen, lease
                    return
        created = self._new_id()
        async with self._locks.hold(msg.tenant_id, created, timeout=timeout) as lease:
            yield created, lease

    async def _session_conversation_id(self, msg: InboundMessage) -> str | None:
        try:
            session = await self._sessions.get_session(msg.tenant_id, msg.session_id)
        except CoordinationUnavailable:
            return None  # a cache: without it, the message starts a conversation
        if session is None:
            return None
        conversation_id = session.get("conversation_id")
        if not isinstance(conversation_id, str) or session.get("user_id") != msg.user_id:
            return None  # another user's session id: not worth that lock's wait
        return conversation_id

    async def _remember_session(self, conversation: Conversation, session_id: str) -> None:
        try:
            await self._sessions.put_session(
                conversation.tenant_id,
                session_id,
                {
                    "conversation_id": conversation.conversation_id,
                    "user_id": conversation.user_id,
                    "channel": conversation.channel.value,
                },
            )
        except CoordinationUnavailable:
            log.debug("session %s not cached (the cache is unavailable)", session_id)

    async def _load_or_create(
        self, msg: InboundMessage, conversation_id: str, field_prefix: str
    ) -> Conversation:
        assert msg.channel is not None  # validated
        if not msg.conversation_id:
            if msg.session_id:
                # The session's conversation (checked under this lock), or
                # a new id: then nothing is stored under it yet.
                found = await self._store.get_conversation(msg.tenant_id, conversation_id)
                if found is not None and not found.status.is_closed:
                    return found
                if found is not None:
                    # Closed under our lock, so the lock was lost: ABORTED, and
                    # the retry starts the new conversation the contract promises.
                    raise VersionConflict(f"conversation {conversation_id!r} was closed")
            now = self._clock.now()
            return Conversation(
                conversation_id=conversation_id,
                tenant_id=msg.tenant_id,
                user_id=msg.user_id,
                channel=msg.channel,
                status=ConversationStatus.ACTIVE,
                created_at=now,
                updated_at=now,
                session_id=msg.session_id,
                channel_metadata=replace(
                    msg.channel_metadata, platform_message_id="", additional_data={}
                ),
            )
        conversation = await self._store.get_conversation(msg.tenant_id, conversation_id)
        if conversation is None:
            raise conversation_not_found(conversation_id)
        if conversation.status.is_closed:
            raise _closed(conversation)
        mismatch = {
            "channel": conversation.channel != msg.channel,
            "user_id": conversation.user_id != msg.user_id,
        }
        if any(mismatch.values()):
            fields = [f"{field_prefix}{name}" for name, differs in mismatch.items() if differs]
            raise FailedPrecondition(
                f"{' and '.join(fields)} differ from the conversation's",
                reason="CONVERSATION_MISMATCH",
                metadata={"conversation_id": conversation_id, "fields": ",".join(fields)},
            )
        return conversation

    async def _answer(
        self, conversation: Conversation, inbound: Message, hints: ProcessingHints, fence: int
    ) -> SendResult:
        """Ask the engine, store the formatted replies, hand them to delivery."""
        started = time.monotonic()
        reply, fallback_reason = await self._ask_engine(conversation, inbound, hints)
        latency_ms = (time.monotonic() - started) * 1000
        now = self._clock.now()
        events: list[DomainEvent] = []
        parts = _formatted(reply.contents, conversation.channel)
        if len(parts) > MAX_REPLY_PARTS:
            log.warning("engine %s reply makes %d messages", self._engine.name, len(parts))
            fallback_reason = "invalid_reply"
        if fallback_reason:
            log.warning(
                "engine %s failed (%s) for conversation %s; fallback reply",
                self._engine.name,
                fallback_reason,
                conversation.conversation_id,
            )
            reply = EngineReply(
                contents=(MessageContent.of_text(self._settings.fallback_text),),
                state=conversation.state,
            )
            parts = _formatted(reply.contents, conversation.channel)
        replies = tuple(
            Message(
                message_id=reply_message_id(inbound.message_id, index),
                tenant_id=conversation.tenant_id,
                conversation_id=conversation.conversation_id,
                sequence=conversation.last_sequence + 1 + index,
                role=MessageRole.BOT,
                channel=conversation.channel,
                user_id=conversation.user_id,
                content=part,
                created_at=now,
                delivery_status=self._delivery.initial_status(conversation.channel),
                reply_to_message_id=inbound.message_id,
            )
            for index, part in enumerate(parts)
        )
        updated = replace(
            conversation,
            last_sequence=conversation.last_sequence + len(replies),
            state=reply.state,
            updated_at=now,
            version=conversation.version + 1,
        )
        if fallback_reason:
            events.append(
                conversation_event(
                    EventType.FALLBACK_USED, updated, now, {"reason": fallback_reason}
                )
            )
        events.extend(
            message_event(EventType.MESSAGE_SENT, message, updated.status) for message in replies
        )
        if reply.escalate and _may_escalate(updated):
            previous = updated.status
            updated = replace(updated, status=ConversationStatus.ESCALATED)
            events.append(status_changed(updated, previous, now, "engine_escalation"))
        result = SendResult(
            message_id=inbound.message_id,
            conversation_id=conversation.conversation_id,
            sequence=inbound.sequence,
            state=updated.state,
            replies=replies,
            response=reply.contents[0] if reply.contents else None,
            engine="fallback" if fallback_reason else self._engine.name,
            engine_latency_ms=latency_ms,
            fallback_used=bool(fallback_reason),
            fallback_reason=fallback_reason,
            confidence_scores=dict(reply.confidence_scores),
        )
        record = IdempotencyRecord(
            conversation.tenant_id, inbound.message_id, inbound.fingerprint, result, now
        )
        await self._writer.write(
            ConversationChange(
                conversation=updated,
                expected_version=conversation.version,
                messages=replies,
                events=tuple(events),
                record=record,
                fencing_token=fence,
            )
        )
        # Enqueued while the conversation is still locked, so deliveries of
        # one conversation are queued in sequence order.
        self._delivery.submit(updated, replies)
        return result

    async def _ask_engine(
        self, conversation: Conversation, inbound: Message, hints: ProcessingHints
    ) -> tuple[EngineReply, str]:
        """The engine's reply (validated), or an empty reply and why it failed."""
        history: Sequence[Message] = ()
        if self._engine.history_size > 0:
            history = await self._store.list_messages(
                conversation.tenant_id,
                conversation.conversation_id,
                limit=self._engine.history_size,
                after_sequence=inbound.sequence,
                descending=True,
            )
        request = EngineRequest(
            tenant_id=conversation.tenant_id,
            conversation_id=conversation.conversation_id,
            message_id=inbound.message_id,
            user_id=conversation.user_id,
            channel=conversation.channel,
            content=inbound.content,
            context=conversation.state,
            hints=hints,
            recent_messages=tuple(reversed(history)),
            sequence=inbound.sequence,
        )
        empty = EngineReply(contents=(), state=conversation.state)
        try:
            async with asyncio.timeout(self._settings.engine_timeout):
                reply = await self._engine.process(request)
        except TimeoutError:
            return empty, "timeout"
        except EngineFailure as failure:
            return empty, failure.reason
        except Exception:
            # An engine bug must cost the user a fallback, not an error.
            log.exception("engine %s raised", self._engine.name)
            return empty, "error"
        try:
            if len(reply.contents) > MAX_REPLY_CONTENTS:
                raise InvalidArgument.of(
                    "response_contents", f"must hold at most {MAX_REPLY_CONTENTS} replies"
                )
            contents = tuple(
                validate_content(content, field_prefix=f"response_contents[{index}].")
                for index, content in enumerate(reply.contents)
            )
        except InvalidArgument as invalid:
            log.warning("engine %s gave an invalid reply: %s", self._engine.name, invalid.message)
            return empty, "invalid_reply"
        return replace(reply, contents=contents), ""


def _formatted(contents: Sequence[MessageContent], channel: Channel) -> list[MessageContent]:
    return [part for content in contents for part in format_for_channel(content, channel)]


def _may_escalate(conversation: Conversation) -> bool:
    # The same rule as UpdateConversationStatus (ERROR cannot be escalated).
    status = conversation.status
    return status is not ConversationStatus.ESCALATED and status.can_become(
        ConversationStatus.ESCALATED
    )


def _closed(conversation: Conversation) -> FailedPrecondition:
    return FailedPrecondition(
        f"conversation is {conversation.status.value}; start a new one",
        reason="CONVERSATION_CLOSED",
        metadata={
            "conversation_id": conversation.conversation_id,
            "status": conversation.status.value,
        },
    )


def _reused_id(field_prefix: str) -> InvalidArgument:
    return InvalidArgument.of(
        f"{field_prefix}message_id",
        "was already used for a different message; use a new id for a new message",
        reason="MESSAGE_ID_REUSED",
    )

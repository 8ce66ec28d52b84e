"""SendMessage: one end-user message in, the bot's reply stored and on its way out.

The steps of DESIGN.md's pipeline (authentication and the tenant's rate
limit happen at the edge, before this use case runs):

  validate and normalize -> take the conversation's lock -> load (from the
  writer's cache) or create the conversation -> store the inbound message
  with its events (its id known: the retry path) -> ask the engine
  (fallback on timeout or error) -> format the reply for the channel -> store
  the replies, the new state, their events and the idempotency record ->
  hand the replies to delivery -> release.

This module takes the locks; message_intake.py does the writes under them,
bot_answer.py the engine call and the reply, and the rules each step
follows are the domain's (domain/turns.py, retries.py, engine_reply.py).

One lock per call: the conversation's (and, for a session's message that
names no conversation, the session's before it). No lock or read guards the
message id: the store refuses a known id (nothing written), so a new message
(the usual case) costs no lookup, and only a retry reads what was stored.

Retries are safe at every point. A retry of a finished call finds the
idempotency record and returns the stored result. A retry after a crash
between the two writes finds the inbound message without a record and
resumes from the engine call, under the lock of the conversation it is
stored in: a duplicate sent while the first is still being answered waits
there, then finds the record. Reply ids derive from the inbound id, so even
two processes racing on one message cannot store two sets of replies.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial

from chat_service.domain.fingerprint import request_fingerprint
from chat_service.domain.model import InboundMessage, Message, SendResult
from chat_service.domain.retries import check_same_request
from chat_service.domain.validation import validate_inbound
from chat_service.pipeline.bot_answer import BotAnswer
from chat_service.pipeline.delivery import DeliveryQueue
from chat_service.pipeline.errors import port_errors
from chat_service.pipeline.message_intake import AlreadyStored, MessageIntake, StaleConversation
from chat_service.pipeline.session_routing import SessionRouting
from chat_service.pipeline.writer import ConversationWriter
from chat_service.ports import (
    Clock,
    ConversationLocks,
    ConversationStore,
    Engine,
    LockLease,
    SessionCache,
    Tracer,
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


@dataclass(slots=True)
class _Call:
    """One call's progress, shared by its caller and the task doing the work."""

    # Set just before the inbound message's write (or a resumed answer)
    # starts: from there on the work finishes even if the caller leaves.
    committed: bool = False
    abandoned: bool = False  # the caller left (cancelled) before the end

    def commit(self) -> None:
        self.committed = True


class SendMessage:
    def __init__(
        self,
        *,
        store: ConversationStore,
        writer: ConversationWriter,
        locks: ConversationLocks,
        engine: Engine,
        delivery: DeliveryQueue,
        sessions: SessionCache,
        clock: Clock,
        settings: SendSettings,
        new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
        tracer: Tracer | None = None,
    ) -> None:
        self._locks = locks
        self._lock_timeout = settings.lock_timeout
        self._new_id = new_id
        self._routing = SessionRouting(
            conversations=writer.conversations, locks=locks, sessions=sessions, new_id=new_id
        )
        self._intake = MessageIntake(
            store=store,
            writer=writer,
            routing=self._routing,
            bot=BotAnswer(
                store=store,
                writer=writer,
                engine=engine,
                delivery=delivery,
                clock=clock,
                engine_timeout=settings.engine_timeout,
                fallback_text=settings.fallback_text,
                tracer=tracer,
            ),
            clock=clock,
        )
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
        cancel the rest (a retry resumes a committed message: see
        MessageIntake.resume)."""
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
        with port_errors():
            try:
                try:
                    return await self._take_new(msg, fingerprint, field_prefix, call, fresh=False)
                except StaleConversation:
                    # Another process wrote the conversation: decide again
                    # (the route too) from what is stored now.
                    return await self._take_new(msg, fingerprint, field_prefix, call, fresh=True)
            except AlreadyStored as already:
                return await self._stored(msg, already.message, fingerprint, field_prefix, call)

    async def _take_new(
        self, msg: InboundMessage, fingerprint: str, field_prefix: str, call: _Call, *, fresh: bool
    ) -> SendOutcome:
        """Under the lock of the conversation the message goes to: the one it
        names, its session's, or a new one."""
        timeout = self._lock_timeout
        if not msg.conversation_id and msg.session_id:
            # The session's messages are resolved one at a time, so they
            # cannot each start a conversation.
            routed = self._routing.hold_conversation(msg, timeout, fresh=fresh)
            async with (
                self._locks.hold(msg.tenant_id, f"session/{msg.session_id}", timeout=timeout),
                routed as (conversation_id, lease),
            ):
                return await self._take_locked(
                    msg, conversation_id, lease, fingerprint, field_prefix, call, fresh=fresh
                )
        conversation_id = msg.conversation_id or self._new_id()
        async with self._locks.hold(msg.tenant_id, conversation_id, timeout=timeout) as lease:
            return await self._take_locked(
                msg, conversation_id, lease, fingerprint, field_prefix, call, fresh=fresh
            )

    async def _take_locked(
        self,
        msg: InboundMessage,
        conversation_id: str,
        lease: LockLease,
        fingerprint: str,
        field_prefix: str,
        call: _Call,
        *,
        fresh: bool,
    ) -> SendOutcome:
        result, replayed = await self._intake.take_new(
            msg,
            conversation_id,
            fingerprint=fingerprint,
            field_prefix=field_prefix,
            fence=lease.fencing_token,
            on_commit=call.commit,
            fresh=fresh,
        )
        return SendOutcome(result, replayed)

    async def _stored(
        self, msg: InboundMessage, stored: Message, fingerprint: str, field_prefix: str, call: _Call
    ) -> SendOutcome:
        """A retry (or a reuse of the id) of `stored`: its stored answer, or
        the answer it never got, under its own conversation's lock."""
        intake = self._intake
        replay = await intake.stored_result(msg, fingerprint, field_prefix)
        if replay is not None:
            return SendOutcome(replay, replayed=True)
        check_same_request(stored.fingerprint, fingerprint, field_prefix=field_prefix)
        async with self._locks.hold(
            msg.tenant_id, stored.conversation_id, timeout=self._lock_timeout
        ) as lease:
            result, replayed = await intake.resume(
                msg,
                stored,
                field_prefix=field_prefix,
                fence=lease.fencing_token,
                on_commit=call.commit,
            )
        return SendOutcome(result, replayed)

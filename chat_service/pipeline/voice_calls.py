"""AnswerCall: a phone call's webhook answered with what the bot says, at once.

Voice is the one synchronous channel: the platform waits, in the webhook's
own response, for what the caller hears next (Twilio: TwiML, within 15
seconds, https://www.twilio.com/docs/usage/webhooks/webhooks-connection-overrides).
HandleWebhook (webhooks.py) verifies and parses the call as for any
platform, then hands it here instead of to the inbox:

- the call starts (answered, nothing said yet): the greeting
  (VOICE_GREETING), then the call listens for turn 1. Nothing is stored:
  the conversation starts with what the caller says, not with the ring
  (a stored placeholder would be a message nobody wrote).
- the caller spoke (turn N): the transcript goes through SendMessage, as a
  TEXT message of the call's conversation (session `session_of(connection,
  caller, call id)`, id `inbound_message_id(voice, "{call id}:{N}")`), and
  its stored replies are said, then the call listens for turn N+1. A
  platform's retry of the same turn is the same message id: one message,
  one reply, said again. The bot gets VOICE_REPLY_TIMEOUT_SECONDS: past it
  the caller hears the fallback text (FALLBACK_MESSAGE) and the call goes on,
  while the message is still answered and its reply stored (its work is
  not cancelled); that reply is not said anywhere, and is recorded FAILED
  (NOT_SAID) rather than SENT. SendMessage errors
  (a store outage, a refused message) also cost the caller the fallback,
  never the platform's "application error".
- the caller said nothing: asked again, up to MAX_SILENCES times in a row,
  then told goodbye and hung up on.
- the call ended (its status callback: completed, busy, failed, no-answer,
  canceled): its conversation is COMPLETED (UpdateConversationStatus), and
  the answer is empty; when a turn of the call is still being answered past
  the answer's deadline, once that turn is stored.

Durability without the inbox: the message and its replies are stored by
SendMessage before the answer leaves, so the inbox would only store the same
thing twice (and its worker would have to be told not to answer it again).
A crash before the answer loses only the answer: Twilio tells the caller
the application failed, and the stored turn stays in the transcript.

Replies on the voice channel are delivered by answering: they are stored
SENT (wiring.DELIVERED_BY_STORING), as web replies are, and never go
through a sender.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol, assert_never

from chat_service.domain.calls import (
    MAX_SILENCES,
    CallAnswer,
    CallEvent,
    CallEventKind,
    speech_of,
    utterance_id,
)
from chat_service.domain.content import MessageContent
from chat_service.domain.content_limits import MAX_TEXT_LENGTH
from chat_service.domain.enums import Channel, ConversationStatus, DeliveryStatus
from chat_service.domain.errors import ChatError, InvalidArgument
from chat_service.domain.events import delivery_updated
from chat_service.domain.model import ChannelMetadata, Conversation, InboundMessage, Message
from chat_service.domain.webhooks import WebhookCall, inbound_message_id, session_of
from chat_service.pipeline.errors import port_errors
from chat_service.pipeline.send_message import SendOutcome
from chat_service.ports import (
    Clock,
    ConversationLocks,
    ConversationQuery,
    ConversationStore,
    OpenedConnection,
    SynchronousChannel,
)

log = logging.getLogger(__name__)

# Twilio waits 15 s for an answer (the page above) and the edge's webhook
# route 10 s (deploy/envoy/envoy.yaml): the bot gets less than both.
DEFAULT_REPLY_TIMEOUT_SECONDS = 8.0
DEFAULT_GREETING = "Hello! How can I help you?"
REPROMPT = "Sorry, I didn't hear anything. What would you like to say?"
GOODBYE = "I didn't hear anything, so I'll hang up now. Goodbye!"
# A call ends a conversation found among the caller's newest ones on the
# voice channel (one per call).
CALL_LOOKUP = 20
VOICE_NUMBER_UNKNOWN = "VOICE_NUMBER_UNKNOWN"
# Why a late turn's replies are FAILED: the caller heard the fallback instead.
NOT_SAID = "not said: the reply came after the voice reply timeout (the fallback was said)"


class SendsMessages(Protocol):
    """SendMessage, as a call uses it."""

    async def __call__(self, inbound: InboundMessage, *, field_prefix: str = "") -> SendOutcome: ...


class UpdatesStatus(Protocol):
    """UpdateConversationStatus, as a call's end uses it."""

    async def __call__(
        self,
        tenant_id: str,
        conversation_id: str,
        status: ConversationStatus | None,
        reason: str = "",
    ) -> Conversation: ...


@dataclass(frozen=True, slots=True)
class CallSettings:
    fallback_text: str
    lock_timeout: float
    reply_timeout: float = DEFAULT_REPLY_TIMEOUT_SECONDS
    greeting: str = DEFAULT_GREETING
    reprompt: str = REPROMPT
    goodbye: str = GOODBYE
    max_silences: int = MAX_SILENCES


@dataclass
class CallStats:
    """What calls did since the process started (for operators and tests)."""

    turns: int = 0  # utterances handed to SendMessage
    fallbacks: int = 0  # of which answered with the fallback text
    late: int = 0  # of those, replies that missed the reply timeout
    ended: int = 0  # conversations completed by a call's end


class AnswerCall:
    def __init__(
        self,
        *,
        send_message: SendsMessages,
        update_status: UpdatesStatus,
        store: ConversationStore,
        locks: ConversationLocks,
        settings: CallSettings,
        clock: Clock,
    ) -> None:
        self._send = send_message
        self._clock = clock
        self._update_status = update_status
        self._store = store
        self._locks = locks
        self._settings = settings
        # Work still going on after its webhook was answered: turns being
        # answered after the caller heard the fallback, a call's end waiting
        # for them.
        self._late: set[asyncio.Task[Any]] = set()
        # Each call's turns being answered (by call id), whoever waits for
        # them: a call's end waits for its own, and nothing in flight is
        # left without a reference (a cancelled webhook keeps its turn).
        self._turns: dict[str, set[asyncio.Task[SendOutcome]]] = {}
        self.stats = CallStats()

    async def __call__(
        self,
        call: WebhookCall,
        adapter: SynchronousChannel,
        verified: Sequence[OpenedConnection],
    ) -> tuple[bytes, str]:
        """The platform's answer to a verified call webhook (body, content type)."""
        event = adapter.call_event(call)
        connection = _connection_for(event, verified)
        answer = await self.answer(call.tenant_id, connection, event)
        return adapter.render(answer, connection)

    async def answer(
        self, tenant_id: str, connection: OpenedConnection, event: CallEvent
    ) -> CallAnswer:
        settings = self._settings
        match event.kind:
            case CallEventKind.STARTED:
                return CallAnswer(say=speech_of([settings.greeting]), listen_turn=1)
            case CallEventKind.SPOKE:
                return await self._spoke(tenant_id, connection, event)
            case CallEventKind.SILENT:
                if event.silences > settings.max_silences:
                    return CallAnswer(say=speech_of([settings.goodbye]), hang_up=True)
                return CallAnswer(
                    say=speech_of([settings.reprompt]),
                    listen_turn=event.turn,
                    silences=event.silences,
                )
            case CallEventKind.ENDED:
                await self._ended(tenant_id, connection, event)
                return CallAnswer()
            case _:
                assert_never(event.kind)

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no turn is being answered and no call's end waits for
        one; False on timeout."""
        try:
            async with asyncio.timeout(timeout):
                while running := self._late | {t for ts in self._turns.values() for t in ts}:
                    await asyncio.wait(running)
        except TimeoutError:
            return False
        return True

    # ------------------------------------------------------------ speaking

    async def _spoke(
        self, tenant_id: str, connection: OpenedConnection, event: CallEvent
    ) -> CallAnswer:
        """The caller's turn stored and answered within the reply timeout."""
        self.stats.turns += 1
        fallback = CallAnswer(
            say=speech_of([self._settings.fallback_text]), listen_turn=event.turn + 1
        )
        inbound = utterance_of(tenant_id, connection, event)
        work = asyncio.create_task(self._send(inbound), name=f"voice turn {inbound.message_id}")
        self._turns.setdefault(event.call_id, set()).add(work)
        work.add_done_callback(partial(self._turn_done, event.call_id))
        try:
            async with asyncio.timeout(self._settings.reply_timeout):
                # Shielded: the turn is answered and stored even when the
                # caller hears the fallback first.
                outcome = await asyncio.shield(work)
        except TimeoutError:
            self.stats.fallbacks += 1
            self.stats.late += 1
            log.warning(
                "voice turn %s of tenant %s not answered within %.1fs; fallback said",
                inbound.message_id,
                tenant_id,
                self._settings.reply_timeout,
            )
            late = asyncio.create_task(
                self._late_turn(tenant_id, work), name=f"late {work.get_name()}"
            )
            self._late.add(late)
            late.add_done_callback(self._late.discard)
            return fallback
        except ChatError as error:
            # A refused or failed turn: the caller hears the fallback and
            # may say it again (the next turn is a new message).
            self.stats.fallbacks += 1
            log.warning(
                "voice turn %s of tenant %s failed (%s: %s); fallback said",
                inbound.message_id,
                tenant_id,
                type(error).__name__,
                error.reason,
            )
            return fallback
        result = outcome.result
        if result.fallback_used:
            self.stats.fallbacks += 1
        said = speech_of(reply.content.text for reply in result.replies)
        return CallAnswer(say=said, listen_turn=event.turn + 1)

    def _turn_done(self, call_id: str, task: asyncio.Task[SendOutcome]) -> None:
        turns = self._turns.get(call_id, set())
        turns.discard(task)
        if not turns:
            self._turns.pop(call_id, None)

    async def _late_turn(self, tenant_id: str, work: asyncio.Task[SendOutcome]) -> None:
        """A turn answered after the caller heard the fallback: its replies,
        stored SENT as every voice reply is (said by answering), were never
        said, and are recorded FAILED with the reason."""
        await asyncio.wait({work})
        if work.cancelled():
            return
        error = work.exception()
        if error is not None:
            log.warning("late voice %s failed: %r", work.get_name(), error)
            return
        outcome = work.result()
        if outcome.replayed:
            return  # an earlier webhook of the same turn said these
        if outcome.result.fallback_used:
            return  # the engine's fallback: the very words the caller heard
        try:
            with port_errors():
                await self._not_said(tenant_id, outcome.result.replies)
        except ChatError as failed:
            log.warning("late voice %s: replies not marked unsaid: %s", work.get_name(), failed)
            return
        log.info("late voice %s answered and stored (not said)", work.get_name())

    async def _not_said(self, tenant_id: str, replies: Sequence[Message]) -> None:
        if not replies:
            return
        conversation = await self._store.get_conversation(tenant_id, replies[0].conversation_id)
        if conversation is None:
            return
        for reply in replies:
            event = delivery_updated(
                conversation,
                reply,
                DeliveryStatus.FAILED,
                self._clock.now(),
                {"error": NOT_SAID},
            )
            await self._store.update_delivery_status(
                tenant_id, reply.message_id, DeliveryStatus.FAILED, event
            )

    # -------------------------------------------------------------- ending

    async def _ended(self, tenant_id: str, connection: OpenedConnection, event: CallEvent) -> None:
        """COMPLETED for the call's conversation, if anything was said in it.

        Taken under the session's lock, the one SendMessage resolves a
        session's conversation under (send_message.py: `session/{id}`), so a
        turn still being answered when the caller hangs up (the usual way a
        call ends) is stored first and its conversation found. A turn that
        holds that lock past this webhook's deadline (a bot slower than the
        reply timeout: the caller heard the fallback, then hung up) is waited
        for after the answer, and the conversation completed then."""
        timeout = min(self._settings.lock_timeout, self._settings.reply_timeout)
        try:
            await self._complete(tenant_id, connection, event, timeout)
        except ChatError as error:
            turns = set(self._turns.get(event.call_id, ()))
            if turns:
                later = asyncio.create_task(
                    self._complete_after(turns, tenant_id, connection, event),
                    name=f"voice call {event.call_id} end",
                )
                self._late.add(later)
                later.add_done_callback(self._late.discard)
                return
            self._not_closed(tenant_id, event, error)

    async def _complete_after(
        self,
        turns: set[asyncio.Task[SendOutcome]],
        tenant_id: str,
        connection: OpenedConnection,
        event: CallEvent,
    ) -> None:
        await asyncio.wait(turns)  # each ends within the engine's own timeout
        try:
            await self._complete(tenant_id, connection, event, self._settings.lock_timeout)
        except ChatError as error:
            self._not_closed(tenant_id, event, error)

    def _not_closed(self, tenant_id: str, event: CallEvent, error: ChatError) -> None:
        # Twilio does not retry a status callback on an error answer (by
        # default): the conversation stays open for an operator.
        log.warning(
            "voice call %s of tenant %s ended, but its conversation was not closed: %s",
            event.call_id,
            tenant_id,
            error.message,
        )

    async def _complete(
        self, tenant_id: str, connection: OpenedConnection, event: CallEvent, timeout: float
    ) -> None:
        session = session_of(connection.connection.connection_id, event.user_id, event.call_id)
        with port_errors():
            async with self._locks.hold(tenant_id, f"session/{session}", timeout=timeout):
                conversation = await self._call_conversation(tenant_id, event, session)
                if conversation is None:
                    log.info("voice call %s ended with nothing said", event.call_id)
                    return
                if conversation.status.is_closed:
                    return
                await self._update_status(
                    tenant_id,
                    conversation.conversation_id,
                    ConversationStatus.COMPLETED,
                    f"call {event.status}",
                )
                self.stats.ended += 1

    async def _call_conversation(
        self, tenant_id: str, event: CallEvent, session: str
    ) -> Conversation | None:
        # The call's first utterance names its conversation (turn 1 is the
        # first one listened for, and silence does not move it). Only when
        # that turn was not stored (it failed), the caller's newest
        # conversations are looked through: a caller id many callers share
        # ("anonymous") may have more than CALL_LOOKUP newer ones.
        first = await self._store.get_message(
            tenant_id, inbound_message_id(Channel.VOICE, utterance_id(event.call_id, 1))
        )
        if first is not None:
            found = await self._store.get_conversation(tenant_id, first.conversation_id)
            if found is not None and found.session_id == session:
                return found
        conversations = await self._store.list_conversations(
            tenant_id,
            ConversationQuery(user_id=event.user_id, channel=Channel.VOICE),
            limit=CALL_LOOKUP,
        )
        return next((c for c in conversations if c.session_id == session), None)


# ----------------------------------------------------------------- helpers


def utterance_of(tenant_id: str, connection: OpenedConnection, event: CallEvent) -> InboundMessage:
    """What the caller said, as SendMessage takes it: the same every time
    the platform sends the same turn (what makes a retry one message). No
    timestamp: the platform gives none, and the time of a retry differs."""
    platform_id = utterance_id(event.call_id, event.turn)
    connection_id = connection.connection.connection_id
    additional: dict[str, str | bool] = {
        "connection_id": connection_id,
        **event.extra,
        "voice_call_sid": event.call_id,
        "voice_turn": str(event.turn),
    }
    text = event.text
    if len(text) > MAX_TEXT_LENGTH:
        additional["truncated_from"] = str(len(text))
        text = text[:MAX_TEXT_LENGTH]
    return InboundMessage(
        tenant_id=tenant_id,
        message_id=inbound_message_id(Channel.VOICE, platform_id),
        conversation_id="",
        user_id=event.user_id,
        channel=Channel.VOICE,
        content=MessageContent.of_text(text),
        session_id=session_of(connection_id, event.user_id, event.call_id),
        channel_metadata=ChannelMetadata(
            platform_message_id=platform_id,
            platform_user_id=event.user_id,
            thread_id=event.call_id,
            workspace_id=event.account_id,
            additional_data=additional,
        ),
        from_platform=True,  # a verified call: it may name its connection
    )


def _connection_for(event: CallEvent, verified: Sequence[OpenedConnection]) -> OpenedConnection:
    """The verified connection of the number called. A number signed for
    (the same Twilio account) but connected by none of them is refused: the
    tenant's number points at this service without a connection for it."""
    for opened in verified:
        if opened.connection.account_id == event.account_id:
            return opened
    raise InvalidArgument.of(
        "body.To",
        f"{event.account_id[:40]!r} is the number of none of this tenant's voice connections",
        reason=VOICE_NUMBER_UNKNOWN,
    )

"""The bot's answer to a stored message: ask the engine (with context, in
bounded time), store the replies with the engine's new state and their
events, hand them to delivery. An engine that fails, stalls or answers
something unusable costs the user a fallback reply, never an error."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from chat_service.domain.engine_reply import plan_reply
from chat_service.domain.model import (
    Conversation,
    IdempotencyRecord,
    Message,
    ProcessingHints,
    SendResult,
)
from chat_service.domain.turns import answer
from chat_service.pipeline.delivery import DeliveryQueue
from chat_service.pipeline.writer import ConversationWriter
from chat_service.ports import (
    Clock,
    ConversationChange,
    ConversationStore,
    Engine,
    EngineFailure,
    EngineReply,
    EngineRequest,
    NoTracer,
    Tracer,
)

log = logging.getLogger(__name__)


class BotAnswer:
    def __init__(
        self,
        *,
        store: ConversationStore,
        writer: ConversationWriter,
        engine: Engine,
        delivery: DeliveryQueue,
        clock: Clock,
        engine_timeout: float,
        fallback_text: str,
        tracer: Tracer | None = None,
    ) -> None:
        self._tracer = tracer or NoTracer()
        self._store = store
        self._writer = writer
        self._engine = engine
        self._delivery = delivery
        self._clock = clock
        self._engine_timeout = engine_timeout
        self._fallback_text = fallback_text

    async def __call__(
        self, conversation: Conversation, inbound: Message, hints: ProcessingHints, fence: int
    ) -> SendResult:
        """Answers `inbound`, the last message of `conversation`; called
        under the conversation's lock (`fence` its lease's token)."""
        started = time.monotonic()
        reply, failure = await self._ask_engine(conversation, inbound, hints)
        latency_ms = (time.monotonic() - started) * 1000
        plan = plan_reply(conversation, reply, failure=failure, fallback_text=self._fallback_text)
        if plan.fallback_reason:
            # The problem names fields and limits only: no user text here.
            log.warning(
                "engine %s failed (%s%s) for conversation %s; fallback reply",
                self._engine.name,
                plan.fallback_reason,
                f": {plan.problem}" if plan.problem else "",
                conversation.conversation_id,
            )
        now = self._clock.now()
        turn = answer(
            conversation,
            inbound,
            plan,
            engine=self._engine.name,
            engine_latency_ms=latency_ms,
            delivery_status=self._delivery.initial_status(conversation.channel),
            at=now,
        )
        record = IdempotencyRecord(
            conversation.tenant_id, inbound.message_id, inbound.fingerprint, turn.result, now
        )
        await self._writer.write(
            ConversationChange(
                conversation=turn.conversation,
                expected_version=conversation.version,
                messages=turn.replies,
                events=turn.events,
                record=record,
                fencing_token=fence,
            )
        )
        # Enqueued while the conversation is still locked, so deliveries of
        # one conversation are queued in sequence order.
        self._delivery.submit(turn.conversation, turn.replies)
        return turn.result

    async def _ask_engine(
        self, conversation: Conversation, inbound: Message, hints: ProcessingHints
    ) -> tuple[EngineReply | None, str]:
        """The engine's reply, or None and why there is none."""
        history: Sequence[Message] = ()
        if self._engine.history_size > 0:
            with self._tracer.span("chat.store.read_history"):
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
        try:
            async with asyncio.timeout(self._engine_timeout):
                return await self._engine.process(request), ""
        except TimeoutError:
            return None, "timeout"
        except EngineFailure as failure:
            return None, failure.reason
        except Exception:
            # An engine bug must cost the user a fallback, not an error.
            log.exception("engine %s raised", self._engine.name)
            return None, "error"

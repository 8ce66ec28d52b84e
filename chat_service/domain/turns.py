"""One turn of a conversation: a user's message taken in, the bot's answer to it.

Pure: each step returns the conversation after it, the messages to store
and the events that describe them; SendMessage writes each as one change.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

from chat_service.domain.engine_reply import ReplyPlan
from chat_service.domain.enums import ConversationStatus, DeliveryStatus, MessageRole
from chat_service.domain.events import (
    DomainEvent,
    EventType,
    conversation_event,
    message_event,
    status_changed,
)
from chat_service.domain.model import Conversation, InboundMessage, Message, SendResult

# Why a conversation was escalated (the status event's reason).
REVIEW_REQUESTED = "require_human_review"
ENGINE_ESCALATION = "engine_escalation"


def reply_message_id(inbound_message_id: str, index: int) -> str:
    """The id of the `index`th reply to a message: derived, so that two
    writers answering one message cannot store two sets of replies. "/" is
    outside the client id alphabet, so no client id can collide."""
    return f"{inbound_message_id}/reply-{index + 1}"


@dataclass(frozen=True, slots=True)
class Received:
    conversation: Conversation  # after the message (escalated if review was asked)
    message: Message
    events: tuple[DomainEvent, ...]
    # False when nobody answers: automation bypassed, or a human has it.
    answered: bool


def receive(
    conversation: Conversation, msg: InboundMessage, *, fingerprint: str, at: datetime
) -> Received:
    """`msg` (validated) taken into `conversation`, which may be new."""
    events: list[DomainEvent] = []
    if conversation.is_new:
        events.append(conversation_event(EventType.CONVERSATION_STARTED, conversation, at))
    message = Message(
        message_id=msg.message_id,
        tenant_id=msg.tenant_id,
        conversation_id=conversation.conversation_id,
        sequence=conversation.last_sequence + 1,
        role=MessageRole.USER,
        channel=conversation.channel,
        user_id=conversation.user_id,
        content=msg.content,
        created_at=at,
        delivery_status=DeliveryStatus.SENT,
        client_time=msg.timestamp,
        channel_metadata=msg.channel_metadata,
        fingerprint=fingerprint,
    )
    updated = replace(
        conversation,
        last_sequence=message.sequence,
        updated_at=at,
        version=conversation.version + 1,
    )
    events.append(message_event(EventType.MESSAGE_RECEIVED, message, updated.status))
    hints = msg.processing_hints
    if hints.require_human_review:
        updated = _escalated(updated, at, REVIEW_REQUESTED, events)
    answered = updated.status is not ConversationStatus.ESCALATED and not hints.bypass_automation
    return Received(updated, message, tuple(events), answered)


@dataclass(frozen=True, slots=True)
class Answer:
    conversation: Conversation  # after the replies, with the engine's state
    replies: tuple[Message, ...]
    events: tuple[DomainEvent, ...]
    result: SendResult


def answer(
    conversation: Conversation,
    inbound: Message,
    plan: ReplyPlan,
    *,
    engine: str,
    engine_latency_ms: float,
    delivery_status: DeliveryStatus,
    at: datetime,
) -> Answer:
    """The bot's replies to `inbound`, the last message of `conversation`,
    stored as `delivery_status` (what storing means on the channel)."""
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
            created_at=at,
            delivery_status=delivery_status,
            reply_to_message_id=inbound.message_id,
        )
        for index, part in enumerate(plan.parts)
    )
    updated = replace(
        conversation,
        last_sequence=conversation.last_sequence + len(replies),
        state=plan.state,
        updated_at=at,
        version=conversation.version + 1,
    )
    events: list[DomainEvent] = []
    if plan.fallback_reason:
        events.append(
            conversation_event(
                EventType.FALLBACK_USED, updated, at, {"reason": plan.fallback_reason}
            )
        )
    events.extend(
        message_event(EventType.MESSAGE_SENT, message, updated.status) for message in replies
    )
    if plan.escalate:
        updated = _escalated(updated, at, ENGINE_ESCALATION, events)
    result = SendResult.of(
        inbound,
        updated,
        replies=replies,
        response=plan.response,
        engine="fallback" if plan.fallback_reason else engine,
        engine_latency_ms=engine_latency_ms,
        fallback_reason=plan.fallback_reason,
        confidence_scores=plan.confidence_scores,
    )
    return Answer(updated, replies, tuple(events), result)


def _escalated(
    conversation: Conversation, at: datetime, reason: str, events: list[DomainEvent]
) -> Conversation:
    """`conversation` handed to a human, where it may be; its status event
    appended to `events`."""
    if not conversation.may_escalate:
        return conversation
    escalated = replace(conversation, status=ConversationStatus.ESCALATED)
    events.append(status_changed(escalated, conversation.status, at, reason))
    return escalated

"""What a retried SendMessage gets back (AIP-155: idempotent by message_id).

A message id names one message. A retry carrying the same request (the same
fingerprint) gets the stored answer and causes nothing new; the same id with
other content is the caller's mistake, never silently answered.
"""

from __future__ import annotations

from chat_service.domain.enums import ConversationStatus
from chat_service.domain.errors import InvalidArgument
from chat_service.domain.model import (
    Conversation,
    IdempotencyRecord,
    Message,
    ProcessingHints,
    SendResult,
)

# What SendResult.engine says of an answer rebuilt from stored replies.
REPLAYED_ENGINE = "replay"


def check_same_request(stored_fingerprint: str, fingerprint: str, *, field_prefix: str) -> None:
    """MESSAGE_ID_REUSED unless the retry is the request that was stored."""
    if stored_fingerprint != fingerprint:
        raise InvalidArgument.of(
            f"{field_prefix}message_id",
            "was already used for a different message; use a new id for a new message",
            reason="MESSAGE_ID_REUSED",
        )


def replay(
    record: IdempotencyRecord | None, fingerprint: str, *, field_prefix: str
) -> SendResult | None:
    """The stored answer to a retry of a finished call; None when the call
    never finished (no record)."""
    if record is None:
        return None
    check_same_request(record.fingerprint, fingerprint, field_prefix=field_prefix)
    return record.result


def late_retry(
    conversation: Conversation,
    inbound: Message,
    stored_replies: tuple[Message, ...],
    hints: ProcessingHints,
) -> SendResult | None:
    """The answer to a retry of a stored message that has no record (a crash
    between the two writes, or a record past its TTL); None when the message
    must be answered now.

    Stored replies make the answer (their engine is no longer known). A
    message nobody answers (bypassed, under review, escalated) gets none. So
    does one the conversation went past meanwhile: an answer now would land
    after later messages."""
    if stored_replies:
        return SendResult.of(
            inbound,
            conversation,
            replies=stored_replies,
            response=stored_replies[0].content,
            engine=REPLAYED_ENGINE,
        )
    if (
        hints.bypass_automation
        or hints.require_human_review
        or conversation.status is ConversationStatus.ESCALATED
        or conversation.last_sequence != inbound.sequence
    ):
        return SendResult.of(inbound, conversation)
    return None

"""Conversations, messages and what is stored with them <-> their documents.

The records a store keeps per conversation, in serialization's shape: the
conversation with its state and channel metadata, its messages, and the
idempotency records that let a retried SendMessage get its first answer
back. These names say which type a document is read as.
"""

from __future__ import annotations

from typing import Any

from chat_service.domain.model import (
    ChannelMetadata,
    Conversation,
    ConversationState,
    IdempotencyRecord,
    Message,
    SendResult,
)
from chat_service.domain.serialization import Document, from_document, to_document


def channel_metadata_to_dict(metadata: ChannelMetadata) -> Document:
    return to_document(metadata)


def channel_metadata_from_dict(data: Any) -> ChannelMetadata:
    return from_document(ChannelMetadata, data)


def conversation_state_to_dict(state: ConversationState) -> Document:
    return to_document(state)


def conversation_state_from_dict(data: Any) -> ConversationState:
    return from_document(ConversationState, data)


def conversation_to_dict(conversation: Conversation) -> Document:
    return to_document(conversation)


def conversation_from_dict(data: Any) -> Conversation:
    return from_document(Conversation, data)


def message_to_dict(message: Message) -> Document:
    return to_document(message)


def message_from_dict(data: Any) -> Message:
    return from_document(Message, data)


def send_result_to_dict(result: SendResult) -> Document:
    return to_document(result)


def send_result_from_dict(data: Any) -> SendResult:
    return from_document(SendResult, data)


def idempotency_record_to_dict(record: IdempotencyRecord) -> Document:
    return to_document(record)


def idempotency_record_from_dict(data: Any) -> IdempotencyRecord:
    return from_document(IdempotencyRecord, data)

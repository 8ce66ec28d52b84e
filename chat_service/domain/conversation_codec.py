"""Conversations, messages and what is stored with them <-> their documents.

The records a store keeps per conversation: the conversation with its state
and channel metadata, its messages, and the idempotency records that let a
retried SendMessage get its first answer back. Content has its own codec
(content_codec), events theirs (event_codec); the conventions are
serialization's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from chat_service.domain.content_codec import content_from_dict, content_to_dict
from chat_service.domain.enums import Channel, ConversationStatus, DeliveryStatus, MessageRole
from chat_service.domain.model import (
    ChannelMetadata,
    Conversation,
    ConversationState,
    IdempotencyRecord,
    Message,
    SendResult,
)
from chat_service.domain.serialization import (
    Document,
    float_map,
    format_datetime,
    optional,
    parse_datetime,
    present_fields,
    tuple_of,
    without_defaults,
)

# ----------------------------------------------------------- metadata, state


def channel_metadata_to_dict(metadata: ChannelMetadata) -> Document:
    return without_defaults(
        metadata,
        {
            "platform_message_id": metadata.platform_message_id,
            "platform_user_id": metadata.platform_user_id,
            "thread_id": metadata.thread_id,
            "workspace_id": metadata.workspace_id,
            "additional_data": dict(metadata.additional_data),
        },
    )


def channel_metadata_from_dict(data: Mapping[str, Any]) -> ChannelMetadata:
    return ChannelMetadata(
        **present_fields(
            data,
            platform_message_id=str,
            platform_user_id=str,
            thread_id=str,
            workspace_id=str,
            additional_data=dict,
        )
    )


def conversation_state_to_dict(state: ConversationState) -> Document:
    return without_defaults(
        state,
        {
            "current_intent": state.current_intent,
            "entities": dict(state.entities),
            "slots": dict(state.slots),
            "user_profile": dict(state.user_profile),
            "conversation_stage": state.conversation_stage,
        },
    )


def conversation_state_from_dict(data: Mapping[str, Any]) -> ConversationState:
    return ConversationState(
        **present_fields(
            data,
            current_intent=str,
            entities=dict,
            slots=dict,
            user_profile=dict,
            conversation_stage=str,
        )
    )


# ------------------------------------------------------ conversations, messages


def conversation_to_dict(conversation: Conversation) -> Document:
    return without_defaults(
        conversation,
        {
            "conversation_id": conversation.conversation_id,
            "tenant_id": conversation.tenant_id,
            "user_id": conversation.user_id,
            "channel": conversation.channel.value,
            "status": conversation.status.value,
            "created_at": format_datetime(conversation.created_at),
            "updated_at": format_datetime(conversation.updated_at),
            "last_sequence": conversation.last_sequence,
            "version": conversation.version,
            "session_id": conversation.session_id,
            "state": conversation_state_to_dict(conversation.state),
            "channel_metadata": channel_metadata_to_dict(conversation.channel_metadata),
            "status_reason": conversation.status_reason,
        },
    )


def conversation_from_dict(data: Mapping[str, Any]) -> Conversation:
    return Conversation(
        conversation_id=str(data["conversation_id"]),
        tenant_id=str(data["tenant_id"]),
        user_id=str(data["user_id"]),
        channel=Channel(data["channel"]),
        status=ConversationStatus(data["status"]),
        created_at=parse_datetime(data["created_at"]),
        updated_at=parse_datetime(data["updated_at"]),
        **present_fields(
            data,
            last_sequence=int,
            version=int,
            session_id=str,
            state=conversation_state_from_dict,
            channel_metadata=channel_metadata_from_dict,
            status_reason=str,
        ),
    )


def message_to_dict(message: Message) -> Document:
    return without_defaults(
        message,
        {
            "message_id": message.message_id,
            "tenant_id": message.tenant_id,
            "conversation_id": message.conversation_id,
            "sequence": message.sequence,
            "role": message.role.value,
            "channel": message.channel.value,
            "user_id": message.user_id,
            "content": content_to_dict(message.content),
            "created_at": format_datetime(message.created_at),
            "delivery_status": message.delivery_status.value,
            "client_time": None
            if message.client_time is None
            else format_datetime(message.client_time),
            "channel_metadata": channel_metadata_to_dict(message.channel_metadata),
            "reply_to_message_id": message.reply_to_message_id,
            "fingerprint": message.fingerprint,
        },
    )


def message_from_dict(data: Mapping[str, Any]) -> Message:
    return Message(
        message_id=str(data["message_id"]),
        tenant_id=str(data["tenant_id"]),
        conversation_id=str(data["conversation_id"]),
        sequence=int(data["sequence"]),
        role=MessageRole(data["role"]),
        channel=Channel(data["channel"]),
        user_id=str(data["user_id"]),
        content=content_from_dict(data["content"]),
        created_at=parse_datetime(data["created_at"]),
        delivery_status=DeliveryStatus(data["delivery_status"]),
        **present_fields(
            data,
            client_time=optional(parse_datetime),
            channel_metadata=channel_metadata_from_dict,
            reply_to_message_id=str,
            fingerprint=str,
        ),
    )


# ---------------------------------------------------------- results, records


def send_result_to_dict(result: SendResult) -> Document:
    return without_defaults(
        result,
        {
            "message_id": result.message_id,
            "conversation_id": result.conversation_id,
            "sequence": result.sequence,
            "state": conversation_state_to_dict(result.state),
            "replies": [message_to_dict(reply) for reply in result.replies],
            "response": None if result.response is None else content_to_dict(result.response),
            "engine": result.engine,
            "engine_latency_ms": result.engine_latency_ms,
            "fallback_used": result.fallback_used,
            "fallback_reason": result.fallback_reason,
            "confidence_scores": dict(result.confidence_scores),
        },
    )


def send_result_from_dict(data: Mapping[str, Any]) -> SendResult:
    return SendResult(
        message_id=str(data["message_id"]),
        conversation_id=str(data["conversation_id"]),
        sequence=int(data["sequence"]),
        state=conversation_state_from_dict(data.get("state", {})),
        **present_fields(
            data,
            replies=tuple_of(message_from_dict),
            response=optional(content_from_dict),
            engine=str,
            engine_latency_ms=float,
            fallback_used=bool,
            fallback_reason=str,
            confidence_scores=float_map,
        ),
    )


def idempotency_record_to_dict(record: IdempotencyRecord) -> Document:
    return {
        "tenant_id": record.tenant_id,
        "message_id": record.message_id,
        "fingerprint": record.fingerprint,
        "result": send_result_to_dict(record.result),
        "created_at": format_datetime(record.created_at),
    }


def idempotency_record_from_dict(data: Mapping[str, Any]) -> IdempotencyRecord:
    return IdempotencyRecord(
        tenant_id=str(data["tenant_id"]),
        message_id=str(data["message_id"]),
        fingerprint=str(data["fingerprint"]),
        result=send_result_from_dict(data["result"]),
        created_at=parse_datetime(data["created_at"]),
    )

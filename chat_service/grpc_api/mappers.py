"""Mapping between the chatbot.chat.v1 / chatbot.events.v1 messages and the domain.

Plain functions, one per direction that the service needs: requests come
in (`*_from_proto`, `inbound_from_*`), resources and events go out
(`*_to_proto`). Enums are in mappers_enums, content in mappers_content,
Timestamp/Duration/Struct in mappers_wellknown.

Inbound mapping does not validate and never raises on a message the wire can
carry (NaN, huge numbers, unknown enum numbers all pass through to the
domain validator, which turns them into INVALID_ARGUMENT naming the field).
The one exception is a Timestamp outside the range a datetime can hold: it
raises InvalidArgument naming the field (see timestamp_to_datetime).

Outbound mapping leaves out what callers must not see: a conversation's
tenant and version, a message's tenant and request fingerprint.
"""

from __future__ import annotations

from chatbot.chat.v1 import chat_service_pb2, resources_pb2
from chatbot.events.v1 import conversation_event_pb2

from chat_service.domain.enums import Channel, Priority
from chat_service.domain.events import DomainEvent
from chat_service.domain.model import (
    ChannelMetadata,
    Conversation,
    ConversationState,
    InboundMessage,
    Message,
    ProcessingHints,
    SendResult,
)
from chat_service.grpc_api.mappers_content import (
    message_content_from_proto,
    message_content_to_proto,
)
from chat_service.grpc_api.mappers_enums import (
    channel_from_proto,
    channel_to_proto,
    conversation_status_to_proto,
    delivery_status_to_proto,
    message_role_to_proto,
    message_type_from_proto,
    message_type_to_proto,
    priority_from_proto,
    priority_to_proto,
)
from chat_service.grpc_api.mappers_wellknown import (
    datetime_to_timestamp,
    dict_to_struct_or_none,
    milliseconds_to_duration,
    struct_to_dict,
    timestamp_to_datetime,
)

# ------------------------------------------------------------- inbound messages


def inbound_from_send_request(
    request: chat_service_pb2.SendMessageRequest, tenant_id: str
) -> InboundMessage:
    """A SendMessage request as the pipeline's command, for the caller's tenant.

    Raises InvalidArgument (field `timestamp`) only for a Timestamp no
    datetime can hold; everything else is left to the validator.
    """
    return InboundMessage(
        tenant_id=tenant_id,
        message_id=request.message_id,
        conversation_id=request.conversation_id,
        user_id=request.user_id,
        channel=channel_from_proto(request.channel),
        content=message_content_from_proto(request.content),
        session_id=request.session_id,
        timestamp=(
            timestamp_to_datetime(request.timestamp, field="timestamp")
            if request.HasField("timestamp")
            else None
        ),
        channel_metadata=channel_metadata_from_proto(request.channel_metadata),
        processing_hints=processing_hints_from_proto(request.processing_hints),
    )


def inbound_from_stream_message(
    frame: chat_service_pb2.StreamMessage,
    *,
    tenant_id: str,
    conversation_id: str,
    user_id: str,
    channel: Channel | None,
    session_id: str = "",
    field_prefix: str = "message",
) -> InboundMessage:
    """A StreamConversation `message` frame, in the stream's conversation.

    The conversation, user and channel come from the stream's `open`.
    `field_prefix` is the frame's path in StreamConversationRequest, used to
    name the field of an out-of-range timestamp.
    """
    return InboundMessage(
        tenant_id=tenant_id,
        message_id=frame.message_id,
        conversation_id=conversation_id,
        user_id=user_id,
        channel=channel,
        content=message_content_from_proto(frame.content),
        session_id=session_id,
        timestamp=(
            timestamp_to_datetime(frame.timestamp, field=f"{field_prefix}.timestamp")
            if frame.HasField("timestamp")
            else None
        ),
        channel_metadata=channel_metadata_from_proto(frame.channel_metadata),
        processing_hints=processing_hints_from_proto(frame.processing_hints),
    )


# ------------------------------------------------------------ shared resources


def channel_metadata_from_proto(proto: resources_pb2.ChannelMetadata) -> ChannelMetadata:
    return ChannelMetadata(
        platform_message_id=proto.platform_message_id,
        platform_user_id=proto.platform_user_id,
        thread_id=proto.thread_id,
        workspace_id=proto.workspace_id,
        additional_data=struct_to_dict(proto.additional_data),
    )


def channel_metadata_to_proto(metadata: ChannelMetadata) -> resources_pb2.ChannelMetadata:
    return resources_pb2.ChannelMetadata(
        platform_message_id=metadata.platform_message_id,
        platform_user_id=metadata.platform_user_id,
        thread_id=metadata.thread_id,
        workspace_id=metadata.workspace_id,
        additional_data=dict_to_struct_or_none(metadata.additional_data),
    )


def processing_hints_from_proto(proto: resources_pb2.ProcessingHints) -> ProcessingHints:
    return ProcessingHints(
        # The contract: empty means NORMAL. A priority this build does not
        # know is treated the same, rather than failing a newer client.
        priority=priority_from_proto(proto.priority) or Priority.NORMAL,
        expected_response_type=message_type_from_proto(proto.expected_response_type),
        bypass_automation=proto.bypass_automation,
        require_human_review=proto.require_human_review,
    )


def processing_hints_to_proto(hints: ProcessingHints) -> resources_pb2.ProcessingHints:
    return resources_pb2.ProcessingHints(
        priority=priority_to_proto(hints.priority),
        expected_response_type=message_type_to_proto(hints.expected_response_type),
        bypass_automation=hints.bypass_automation,
        require_human_review=hints.require_human_review,
    )


def conversation_state_from_proto(proto: resources_pb2.ConversationState) -> ConversationState:
    return ConversationState(
        current_intent=proto.current_intent,
        entities=struct_to_dict(proto.entities),
        slots=struct_to_dict(proto.slots),
        user_profile=struct_to_dict(proto.user_profile),
        conversation_stage=proto.conversation_stage,
    )


def conversation_state_to_proto(state: ConversationState) -> resources_pb2.ConversationState:
    return resources_pb2.ConversationState(
        current_intent=state.current_intent,
        entities=dict_to_struct_or_none(state.entities),
        slots=dict_to_struct_or_none(state.slots),
        user_profile=dict_to_struct_or_none(state.user_profile),
        conversation_stage=state.conversation_stage,
    )


# --------------------------------------------------------- outbound resources


def conversation_to_proto(conversation: Conversation) -> resources_pb2.Conversation:
    """The caller's view of a conversation: no tenant, no version."""
    return resources_pb2.Conversation(
        conversation_id=conversation.conversation_id,
        user_id=conversation.user_id,
        session_id=conversation.session_id,
        channel=channel_to_proto(conversation.channel),
        status=conversation_status_to_proto(conversation.status),
        state=conversation_state_to_proto(conversation.state),
        create_time=datetime_to_timestamp(conversation.created_at),
        update_time=datetime_to_timestamp(conversation.updated_at),
        last_sequence=conversation.last_sequence,
        channel_metadata=channel_metadata_to_proto(conversation.channel_metadata),
        status_reason=conversation.status_reason,
    )


def message_to_proto(message: Message) -> resources_pb2.Message:
    """The caller's view of a stored message: no tenant, no request fingerprint."""
    proto = resources_pb2.Message(
        message_id=message.message_id,
        conversation_id=message.conversation_id,
        sequence=message.sequence,
        role=message_role_to_proto(message.role),
        channel=channel_to_proto(message.channel),
        content=message_content_to_proto(message.content),
        channel_metadata=channel_metadata_to_proto(message.channel_metadata),
        delivery_status=delivery_status_to_proto(message.delivery_status),
        create_time=datetime_to_timestamp(message.created_at),
        reply_to_message_id=message.reply_to_message_id,
        user_id=message.user_id,
    )
    if message.client_time is not None:
        proto.client_time.CopyFrom(datetime_to_timestamp(message.client_time))
    return proto


def send_result_to_response(result: SendResult) -> chat_service_pb2.SendMessageResponse:
    response = chat_service_pb2.SendMessageResponse(
        message_id=result.message_id,
        conversation_id=result.conversation_id,
        conversation_state=conversation_state_to_proto(result.state),
        processing_metadata=chat_service_pb2.ProcessingMetadata(
            engine=result.engine,
            engine_latency=milliseconds_to_duration(result.engine_latency_ms),
            fallback_used=result.fallback_used,
            fallback_reason=result.fallback_reason,
            sequence=result.sequence,
            reply_sequences=[reply.sequence for reply in result.replies],
            confidence_scores=dict(result.confidence_scores),
        ),
        replies=[message_to_proto(reply) for reply in result.replies],
    )
    # Unset, not empty, when the bot did not answer.
    if result.response is not None:
        response.response.CopyFrom(message_content_to_proto(result.response))
    return response


def event_to_proto(event: DomainEvent) -> conversation_event_pb2.ConversationEvent:
    """A domain event as published to Kafka and streamed by WatchConversations.

    The event carries the domain's plain strings ("whatsapp", "text"), not
    proto enums, so that analytics consumers need no enum tables.
    """
    return conversation_event_pb2.ConversationEvent(
        event_id=event.event_id,
        event_type=event.event_type.value,
        tenant_id=event.tenant_id,
        conversation_id=event.conversation_id,
        timestamp=datetime_to_timestamp(event.occurred_at),
        channel=event.channel.value,
        user_id=event.user_id,
        message_type=event.message_type.value if event.message_type is not None else "",
        metadata=dict_to_struct_or_none(event.metadata),
        message_id=event.message_id,
        sequence=event.sequence,
        conversation_status=(
            event.conversation_status.value if event.conversation_status is not None else ""
        ),
    )

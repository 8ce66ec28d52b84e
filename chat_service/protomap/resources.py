"""Mapping of the chatbot.chat.v1 resources (Conversation, Message and their
parts), both ways: the gRPC API answers with them, and the MCP Engine's
requests carry them."""

from __future__ import annotations

from chatbot.chat.v1 import resources_pb2

from chat_service.domain.enums import Priority
from chat_service.domain.model import (
    ChannelMetadata,
    Conversation,
    ConversationState,
    Message,
    ProcessingHints,
)
from chat_service.protomap.content import message_content_to_proto
from chat_service.protomap.enums import (
    channel_to_proto,
    conversation_status_to_proto,
    delivery_status_to_proto,
    message_role_to_proto,
    message_type_from_proto,
    message_type_to_proto,
    priority_from_proto,
    priority_to_proto,
)
from chat_service.protomap.wellknown import (
    datetime_to_timestamp,
    dict_to_struct_or_none,
    struct_to_dict,
)


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
        # The contract: empty means NORMAL. Unknown numbers never get here:
        # the gRPC API refuses them (grpc_api.mappers).
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

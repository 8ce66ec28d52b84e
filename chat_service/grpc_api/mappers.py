"""The gRPC API's requests and responses <-> the pipeline's commands and results.

The resources, content, enums and well-known types these are made of are
mapped by chat_service.protomap, shared with the adapters.

Inbound mapping leaves checking to the domain validator, which names the
field itself. It raises InvalidArgument naming the field only for what the
domain cannot tell from a valid value: a Timestamp no datetime can hold,
and a processing hint's enum number this build does not know (mapped, it
would read as "no preference").
"""

from __future__ import annotations

from chatbot.chat.v1 import chat_service_pb2, resources_pb2

from chat_service.domain.enums import Channel
from chat_service.domain.errors import FieldViolation, InvalidArgument
from chat_service.domain.model import InboundMessage, ProcessingHints, SendResult
from chat_service.protomap.content import message_content_from_proto, message_content_to_proto
from chat_service.protomap.enums import (
    channel_from_proto,
    message_type_from_proto,
    priority_from_proto,
)
from chat_service.protomap.resources import (
    channel_metadata_from_proto,
    conversation_state_to_proto,
    message_to_proto,
    processing_hints_from_proto,
)
from chat_service.protomap.wellknown import milliseconds_to_duration, timestamp_to_datetime

# ------------------------------------------------------------- inbound messages


def inbound_from_send_request(
    request: chat_service_pb2.SendMessageRequest, tenant_id: str
) -> InboundMessage:
    """A SendMessage request as the pipeline's command, for the caller's tenant.

    Raises InvalidArgument for a Timestamp no datetime can hold (field
    `timestamp`) and for hint enums this build does not know; everything
    else is left to the validator.
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
        processing_hints=_known_hints(request.processing_hints, field="processing_hints"),
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
    name the field of an out-of-range timestamp or an unknown hint.
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
        processing_hints=_known_hints(
            frame.processing_hints, field=f"{field_prefix}.processing_hints"
        ),
    )


def _known_hints(proto: resources_pb2.ProcessingHints, *, field: str) -> ProcessingHints:
    """The hints, refusing enum numbers this build does not know: unset
    (zero) means "no preference", an unknown one is the caller's mistake
    (or a newer client's), as it is for every other enum of a request."""
    violations = []
    if proto.priority and priority_from_proto(proto.priority) is None:
        violations.append(
            FieldViolation(f"{field}.priority", f"unknown Priority value {proto.priority}")
        )
    kind = proto.expected_response_type
    if kind and message_type_from_proto(kind) is None:
        violations.append(
            FieldViolation(f"{field}.expected_response_type", f"unknown MessageType value {kind}")
        )
    if violations:
        raise InvalidArgument(violations)
    return processing_hints_from_proto(proto)


# ------------------------------------------------------------------ responses


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

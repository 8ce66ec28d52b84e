"""chatbot.mcp.v1 messages <-> the engine port's dataclasses."""

from __future__ import annotations

from chatbot.mcp.v1 import engine_service_pb2 as pb

from chat_service.ports import EngineReply, EngineRequest, ExpectedInput
from chat_service.protomap.content import message_content_from_proto, message_content_to_proto
from chat_service.protomap.enums import channel_to_proto, message_type_from_proto
from chat_service.protomap.resources import (
    conversation_state_from_proto,
    conversation_state_to_proto,
    message_to_proto,
    processing_hints_to_proto,
)


def request_to_proto(request: EngineRequest) -> pb.ProcessMessageRequest:
    return pb.ProcessMessageRequest(
        tenant_id=request.tenant_id,
        conversation_id=request.conversation_id,
        message_id=request.message_id,
        user_id=request.user_id,
        channel=channel_to_proto(request.channel),
        content=message_content_to_proto(request.content),
        context=conversation_state_to_proto(request.context),
        hints=processing_hints_to_proto(request.hints),
        recent_messages=[message_to_proto(m) for m in request.recent_messages],
        sequence=request.sequence,
    )


def reply_from_proto(response: pb.ProcessMessageResponse) -> EngineReply:
    return EngineReply(
        contents=tuple(message_content_from_proto(c) for c in response.response_contents),
        state=conversation_state_from_proto(response.updated_context),
        next_expected_inputs=tuple(
            ExpectedInput(
                slot=expected.slot,
                type=(kind.value if (kind := message_type_from_proto(expected.type)) else ""),
                suggestions=tuple(expected.suggestions),
            )
            for expected in response.next_expected_inputs
        ),
        confidence_scores=dict(response.confidence_scores),
        escalate=response.escalate,
    )

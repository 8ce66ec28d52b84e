"""`python -m bench.grpc_layer_service`: the service with its SendMessage use
case answering a fixed result at once, everything else as `python -m
chat_service` runs it (the interceptors, authentication, the rate limit,
request validation and mapping, the response's mapping).

What the gRPC layer costs alone: the ceiling of SendMessage's speed on
this stack, whatever the pipeline behind it does (scenario
send-message-grpc-layer). Never a way to run the service: bench only.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime

from chat_service.domain.content import MessageContent
from chat_service.domain.enums import Channel, DeliveryStatus, MessageRole
from chat_service.domain.model import ConversationState, InboundMessage, Message, SendResult
from chat_service.pipeline import send_message


async def _fixed_answer(
    self: send_message.SendMessage, inbound: InboundMessage, *, field_prefix: str = ""
) -> send_message.SendOutcome:
    conversation_id = inbound.conversation_id or "bench-conversation"
    reply = Message(
        message_id=f"{inbound.message_id}-reply",
        tenant_id=inbound.tenant_id,
        conversation_id=conversation_id,
        sequence=2,
        role=MessageRole.BOT,
        channel=inbound.channel or Channel.WEB,
        user_id=inbound.user_id,
        content=MessageContent.of_text("a fixed answer"),
        created_at=datetime.now(UTC),
        delivery_status=DeliveryStatus.SENT,
    )
    result = SendResult(
        message_id=inbound.message_id,
        conversation_id=conversation_id,
        sequence=1,
        state=ConversationState(),
        replies=(reply,),
    )
    return send_message.SendOutcome(result, replayed=False)


def main() -> int:
    send_message.SendMessage.__call__ = _fixed_answer  # type: ignore[method-assign]
    from chat_service.__main__ import main as serve

    return serve(["serve"])


if __name__ == "__main__":
    sys.exit(main())

"""Request builders and a per-tenant client for the end-to-end tests.

Every e2e test works in a tenant of its own (`unique_tenant`), so tests that
share the session's service never see each other's conversations.
`TenantClient` binds a stub to one tenant's token and wraps the RPCs the
tests call; `failure` turns an expected error into the decoded rich status.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

import grpc
import pytest
from chatbot.chat.v1 import chat_service_pb2 as pb
from chatbot.chat.v1 import chat_service_pb2_grpc, content_pb2, resources_pb2

from chat_service.auth import DEV_SCOPES
from tests.support.grpc_client import Metadata, RichError, bearer, rich_error
from tests.support.service import ServiceProcess

MessageType: TypeAlias = content_pb2.MessageType.ValueType
Channel: TypeAlias = resources_pb2.Channel.ValueType
ConversationStatus: TypeAlias = resources_pb2.ConversationStatus.ValueType

WEB = resources_pb2.CHANNEL_WEB

MEDIA_URL = "https://cdn.example.com/files/item"


def unique_tenant(hint: str) -> str:
    """A tenant id no other test uses: the hint (a test's name) plus a random suffix."""
    slug = re.sub(r"[^a-z0-9]+", "-", hint.lower()).strip("-")[:40]
    return f"{slug}-{uuid.uuid4().hex[:10]}"


# ------------------------------------------------------------------ content


def text_content(text: str = "just looking around", **fields: Any) -> content_pb2.MessageContent:
    return content_pb2.MessageContent(type=content_pb2.MESSAGE_TYPE_TEXT, text=text, **fields)


def media(mime: str = "image/png", **fields: Any) -> content_pb2.MediaContent:
    values: dict[str, Any] = {"url": f"{MEDIA_URL}.bin", "type": mime, "size_bytes": 2048}
    return content_pb2.MediaContent(**(values | fields))


def media_content(
    message_type: MessageType = content_pb2.MESSAGE_TYPE_IMAGE,
    mime: str = "image/png",
    **media_fields: Any,
) -> content_pb2.MessageContent:
    return content_pb2.MessageContent(type=message_type, media=media(mime, **media_fields))


def location(**fields: Any) -> content_pb2.LocationContent:
    values: dict[str, Any] = {"latitude": 48.8584, "longitude": 2.2945, "address": "Champ de Mars"}
    return content_pb2.LocationContent(**(values | fields))


def location_content(**location_fields: Any) -> content_pb2.MessageContent:
    return content_pb2.MessageContent(
        type=content_pb2.MESSAGE_TYPE_LOCATION, location=location(**location_fields)
    )


def quick_reply(**fields: Any) -> content_pb2.QuickReply:
    return content_pb2.QuickReply(**({"title": "Yes", "payload": "yes"} | fields))


def quick_reply_content(*replies: content_pb2.QuickReply) -> content_pb2.MessageContent:
    return content_pb2.MessageContent(
        type=content_pb2.MESSAGE_TYPE_QUICK_REPLY,
        text="yes",
        quick_replies=list(replies) or [quick_reply()],
    )


def postback(**fields: Any) -> content_pb2.Button:
    values: dict[str, Any] = {
        "type": content_pb2.BUTTON_TYPE_POSTBACK,
        "title": "Choose",
        "payload": "choose",
    }
    return content_pb2.Button(**(values | fields))


def card(**fields: Any) -> content_pb2.CarouselCard:
    values: dict[str, Any] = {
        "title": "Blue shirt",
        "subtitle": "Cotton, all sizes",
        "image_url": f"{MEDIA_URL}.png",
        "buttons": [postback()],
    }
    return content_pb2.CarouselCard(**(values | fields))


def carousel_content(*cards: content_pb2.CarouselCard) -> content_pb2.MessageContent:
    return content_pb2.MessageContent(
        type=content_pb2.MESSAGE_TYPE_CAROUSEL, cards=list(cards) or [card()]
    )


# One valid content per message type, as an end user could send it.
VALID_CONTENTS: Mapping[MessageType, content_pb2.MessageContent] = {
    content_pb2.MESSAGE_TYPE_TEXT: text_content(),
    content_pb2.MESSAGE_TYPE_IMAGE: media_content(
        content_pb2.MESSAGE_TYPE_IMAGE, "image/jpeg", alt_text="a cat"
    ),
    content_pb2.MESSAGE_TYPE_FILE: media_content(content_pb2.MESSAGE_TYPE_FILE, "application/pdf"),
    content_pb2.MESSAGE_TYPE_AUDIO: media_content(content_pb2.MESSAGE_TYPE_AUDIO, "audio/mpeg"),
    content_pb2.MESSAGE_TYPE_VIDEO: media_content(content_pb2.MESSAGE_TYPE_VIDEO, "video/mp4"),
    content_pb2.MESSAGE_TYPE_LOCATION: location_content(),
    content_pb2.MESSAGE_TYPE_QUICK_REPLY: quick_reply_content(),
    content_pb2.MESSAGE_TYPE_CAROUSEL: carousel_content(),
}


def send_request(
    content: content_pb2.MessageContent | None = None,
    *,
    user_id: str = "user-1",
    channel: Channel = WEB,
    message_id: str = "",
    conversation_id: str = "",
    **fields: Any,
) -> pb.SendMessageRequest:
    """A valid SendMessageRequest (a TEXT message on the web channel by default)."""
    return pb.SendMessageRequest(
        message_id=message_id,
        conversation_id=conversation_id,
        user_id=user_id,
        channel=channel,
        content=content if content is not None else text_content(),
        **fields,
    )


# ------------------------------------------------------------------ calling


async def failure(call: Awaitable[object]) -> RichError:
    """Await a call that must fail; its decoded rich status."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return rich_error(caught.value)


def client_for(
    service: ServiceProcess,
    stub: chat_service_pb2_grpc.ChatServiceAsyncStub,
    hint: str,
    *,
    scopes: Iterable[str] = DEV_SCOPES,
) -> TenantClient:
    """A client in a new tenant of its own (named after `hint`, a test's name)."""
    tenant = unique_tenant(hint)
    return TenantClient(stub, tenant, bearer(service.token(tenant, scopes=scopes)))


@dataclass(frozen=True)
class TenantClient:
    """The ChatService as one tenant's token sees it."""

    stub: chat_service_pb2_grpc.ChatServiceAsyncStub
    tenant: str
    metadata: Metadata

    async def send(self, request: pb.SendMessageRequest) -> pb.SendMessageResponse:
        return await self.stub.SendMessage(request, metadata=self.metadata)

    async def send_text(self, text: str, **fields: Any) -> pb.SendMessageResponse:
        return await self.send(send_request(text_content(text), **fields))

    async def get(self, conversation_id: str) -> resources_pb2.Conversation:
        response = await self.stub.GetConversation(
            pb.GetConversationRequest(conversation_id=conversation_id), metadata=self.metadata
        )
        return response.conversation

    async def list_conversations(self, **fields: Any) -> pb.ListConversationsResponse:
        return await self.stub.ListConversations(
            pb.ListConversationsRequest(**fields), metadata=self.metadata
        )

    async def list_messages(self, conversation_id: str, **fields: Any) -> pb.ListMessagesResponse:
        return await self.stub.ListMessages(
            pb.ListMessagesRequest(conversation_id=conversation_id, **fields),
            metadata=self.metadata,
        )

    def with_scopes(self, service: ServiceProcess, *scopes: str) -> TenantClient:
        """The same tenant, with a token holding only `scopes`."""
        return TenantClient(
            self.stub, self.tenant, bearer(service.token(self.tenant, scopes=scopes))
        )

    async def update_status(
        self, conversation_id: str, status: ConversationStatus, reason: str = ""
    ) -> resources_pb2.Conversation:
        response = await self.stub.UpdateConversationStatus(
            pb.UpdateConversationStatusRequest(
                conversation_id=conversation_id, status=status, reason=reason
            ),
            metadata=self.metadata,
        )
        return response.conversation

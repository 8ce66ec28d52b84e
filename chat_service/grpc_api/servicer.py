"""ChatService's gRPC handlers: map the request, run the use case, map the result.

No logic lives here: authentication and the rate limit ran in the
interceptors, errors raised by the use cases become statuses in the error
interceptor. RPCs whose use case is not built yet answer UNIMPLEMENTED.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from chatbot.chat.v1 import chat_service_pb2 as pb
from chatbot.chat.v1 import chat_service_pb2_grpc
from google.protobuf.message import Message

from chat_service.domain.enums import SortOrder
from chat_service.domain.errors import FieldViolation, InvalidArgument, Unimplemented
from chat_service.grpc_api.auth_interceptor import current_principal
from chat_service.grpc_api.mappers import inbound_from_send_request, send_result_to_response
from chat_service.grpc_api.mappers_enums import sort_order_from_proto
from chat_service.grpc_api.streaming import (
    StreamFrames,
    export_conversation,
    stream_conversation,
    watch_conversations,
)
from chat_service.grpc_api.webhook_mapping import (
    ORIGINAL_PATH_HEADER,
    handle_webhook_response,
    verify_webhook_response,
    webhook_headers,
)
from chat_service.pipeline.connections import ChannelConnections
from chat_service.pipeline.conversations import ConversationQueries, UpdateConversationStatus
from chat_service.pipeline.export import ExportConversation
from chat_service.pipeline.retry_delivery import RetryDelivery
from chat_service.pipeline.send_message import SendMessage
from chat_service.pipeline.stream_opener import ConversationStreams
from chat_service.pipeline.watch import WatchConversations
from chat_service.pipeline.webhooks import HandleWebhook, VerifyWebhook
from chat_service.ports import ConversationQuery
from chat_service.protomap.connections import connection_fields_from_proto, connection_to_proto
from chat_service.protomap.enums import channel_from_proto, conversation_status_from_proto
from chat_service.protomap.resources import conversation_to_proto, message_to_proto
from chat_service.protomap.wellknown import timestamp_to_datetime

Context = Any  # grpc.aio.ServicerContext; its stubs are not generic-friendly here

IDEMPOTENT_REPLAY_HEADER = "x-idempotent-replay"


class ChatServicer(chat_service_pb2_grpc.ChatServiceServicer):
    def __init__(
        self,
        *,
        send_message: SendMessage,
        queries: ConversationQueries,
        update_status: UpdateConversationStatus,
        streams: ConversationStreams,
        watch: WatchConversations,
        export: ExportConversation,
        connections: ChannelConnections,
        retry_delivery: RetryDelivery,
        error_domain: str,
        handle_webhook: HandleWebhook | None = None,
        verify_webhook: VerifyWebhook | None = None,
    ) -> None:
        self._handle_webhook = handle_webhook
        self._verify_webhook = verify_webhook
        self._send_message = send_message
        self._queries = queries
        self._update_status = update_status
        self._streams = streams
        self._watch = watch
        self._export = export
        self._connections = connections
        self._retry_delivery = retry_delivery
        self._error_domain = error_domain
        # Live events' frames, built once for every stream that carries them.
        self._stream_frames = StreamFrames(watch.tokens)

    async def SendMessage(
        self, request: pb.SendMessageRequest, context: Context
    ) -> pb.SendMessageResponse:
        tenant_id = current_principal().tenant_id
        outcome = await self._send_message(inbound_from_send_request(request, tenant_id))
        if outcome.replayed:
            context.set_trailing_metadata(((IDEMPOTENT_REPLAY_HEADER, "true"),))
        return send_result_to_response(outcome.result)

    async def GetConversation(
        self, request: pb.GetConversationRequest, context: Context
    ) -> pb.GetConversationResponse:
        conversation = await self._queries.get(
            current_principal().tenant_id, request.conversation_id
        )
        return pb.GetConversationResponse(conversation=conversation_to_proto(conversation))

    async def ListConversations(
        self, request: pb.ListConversationsRequest, context: Context
    ) -> pb.ListConversationsResponse:
        _known_enums(request, "status", "channel", "order")
        query = ConversationQuery(
            status=conversation_status_from_proto(request.status),
            channel=channel_from_proto(request.channel),
            user_id=request.user_id,
            start_time=(
                timestamp_to_datetime(request.start_time, field="start_time")
                if request.HasField("start_time")
                else None
            ),
            end_time=(
                timestamp_to_datetime(request.end_time, field="end_time")
                if request.HasField("end_time")
                else None
            ),
            search_query=request.search_query,
            descending=sort_order_from_proto(request.order) is not SortOrder.ASCENDING,
        )
        page = await self._queries.list_conversations(
            current_principal().tenant_id,
            query,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return pb.ListConversationsResponse(
            conversations=[conversation_to_proto(c) for c in page.items],
            next_page_token=page.next_page_token,
        )

    async def ListMessages(
        self, request: pb.ListMessagesRequest, context: Context
    ) -> pb.ListMessagesResponse:
        _known_enums(request, "order")
        page = await self._queries.list_messages(
            current_principal().tenant_id,
            request.conversation_id,
            page_size=request.page_size,
            page_token=request.page_token,
            descending=sort_order_from_proto(request.order) is SortOrder.DESCENDING,
        )
        return pb.ListMessagesResponse(
            messages=[message_to_proto(m) for m in page.items],
            next_page_token=page.next_page_token,
        )

    async def UpdateConversationStatus(
        self, request: pb.UpdateConversationStatusRequest, context: Context
    ) -> pb.UpdateConversationStatusResponse:
        _known_enums(request, "status")
        conversation = await self._update_status(
            current_principal().tenant_id,
            request.conversation_id,
            conversation_status_from_proto(request.status),
            request.reason,
        )
        return pb.UpdateConversationStatusResponse(conversation=conversation_to_proto(conversation))

    async def ExportConversation(
        self, request: pb.ExportConversationRequest, context: Context
    ) -> AsyncIterator[pb.ExportConversationResponse]:
        tenant_id = current_principal().tenant_id
        async for chunk in export_conversation(request, self._export, tenant_id):
            yield chunk

    async def StreamConversation(
        self, request_iterator: AsyncIterator[pb.StreamConversationRequest], context: Context
    ) -> AsyncIterator[pb.StreamConversationResponse]:
        tenant_id = current_principal().tenant_id
        async for frame in stream_conversation(
            request_iterator,
            self._streams,
            tenant_id,
            error_domain=self._error_domain,
            shared=self._stream_frames,
        ):
            yield frame

    async def WatchConversations(
        self, request: pb.WatchConversationsRequest, context: Context
    ) -> AsyncIterator[pb.WatchConversationsResponse]:
        tenant_id = current_principal().tenant_id
        async for response in watch_conversations(
            request, self._watch, tenant_id, context, self._stream_frames
        ):
            yield response

    # Channel connections (scope chat:admin).

    async def CreateChannelConnection(
        self, request: pb.CreateChannelConnectionRequest, context: Context
    ) -> pb.CreateChannelConnectionResponse:
        principal = current_principal()
        created = await self._connections.create(
            principal.tenant_id,
            connection_fields_from_proto(request.connection),
            request_id=request.request_id,
            actor=principal.subject,
        )
        return pb.CreateChannelConnectionResponse(connection=connection_to_proto(created))

    async def GetChannelConnection(
        self, request: pb.GetChannelConnectionRequest, context: Context
    ) -> pb.GetChannelConnectionResponse:
        found = await self._connections.get(current_principal().tenant_id, request.connection_id)
        return pb.GetChannelConnectionResponse(connection=connection_to_proto(found))

    async def ListChannelConnections(
        self, request: pb.ListChannelConnectionsRequest, context: Context
    ) -> pb.ListChannelConnectionsResponse:
        _known_enums(request, "channel")
        page = await self._connections.list_connections(
            current_principal().tenant_id,
            channel=channel_from_proto(request.channel),
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return pb.ListChannelConnectionsResponse(
            connections=[connection_to_proto(c) for c in page.items],
            next_page_token=page.next_page_token,
        )

    async def UpdateChannelConnection(
        self, request: pb.UpdateChannelConnectionRequest, context: Context
    ) -> pb.UpdateChannelConnectionResponse:
        principal = current_principal()
        updated = await self._connections.update(
            principal.tenant_id,
            request.connection.connection_id,
            lambda channel: connection_fields_from_proto(
                request.connection, channel_if_unset=channel
            ),
            tuple(request.update_mask.paths),
            actor=principal.subject,
        )
        return pb.UpdateChannelConnectionResponse(connection=connection_to_proto(updated))

    async def DeleteChannelConnection(
        self, request: pb.DeleteChannelConnectionRequest, context: Context
    ) -> pb.DeleteChannelConnectionResponse:
        principal = current_principal()
        await self._connections.delete(
            principal.tenant_id, request.connection_id, actor=principal.subject
        )
        return pb.DeleteChannelConnectionResponse()

    async def RetryDelivery(
        self, request: pb.RetryDeliveryRequest, context: Context
    ) -> pb.RetryDeliveryResponse:
        message = await self._retry_delivery(current_principal().tenant_id, request.message_id)
        return pb.RetryDeliveryResponse(message=message_to_proto(message))

    # Platform webhooks (no JWT: the platform's signature authenticates them).

    async def HandleWebhook(
        self, request: pb.HandleWebhookRequest, context: Context
    ) -> pb.HandleWebhookResponse:
        if self._handle_webhook is None:
            raise _not_yet("HandleWebhook")
        headers = webhook_headers(context.invocation_metadata())
        answer = await self._handle_webhook(
            tenant_id=request.tenant_id,
            platform=request.platform,
            body=request.body.data,
            content_type=request.body.content_type,
            headers=headers,
            original_path=headers.get(ORIGINAL_PATH_HEADER, ""),
        )
        return handle_webhook_response(answer)

    async def VerifyWebhook(
        self, request: pb.VerifyWebhookRequest, context: Context
    ) -> pb.VerifyWebhookResponse:
        if self._verify_webhook is None:
            raise _not_yet("VerifyWebhook")
        answer = await self._verify_webhook(
            tenant_id=request.tenant_id,
            platform=request.platform,
            mode=request.hub.mode,
            verify_token=request.hub.verify_token,
            challenge=request.hub.challenge,
        )
        return verify_webhook_response(answer)


def _known_enums(request: Message, *fields: str) -> None:
    """Refuse enum numbers this server does not know (a newer client's value):
    read as "unset" they would silently widen a filter."""
    violations = []
    for name in fields:
        number = getattr(request, name)
        enum = request.DESCRIPTOR.fields_by_name[name].enum_type
        if enum is not None and enum.values_by_number.get(number) is None:
            violations.append(FieldViolation(name, f"unknown {enum.name} value {number}"))
    if violations:
        raise InvalidArgument(violations)


def _not_yet(method: str) -> Unimplemented:
    return Unimplemented(f"{method} is not implemented yet", reason="NOT_IMPLEMENTED_YET")

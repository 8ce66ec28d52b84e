"""The auth and error interceptors on a real grpc.aio server, over a real channel."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from chatbot.chat.v1 import chat_service_pb2, chat_service_pb2_grpc, resources_pb2
from google.api import httpbody_pb2  # type: ignore[import-untyped, unused-ignore]
from google.protobuf.message import Message as ProtoMessage
from google.rpc import error_details_pb2  # type: ignore[import-untyped, unused-ignore]
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from chat_service.auth import SCOPE_READ, SCOPE_WRITE, DevKey, Principal, load_or_create_dev_key
from chat_service.domain.errors import (
    FieldViolation,
    InvalidArgument,
    ResourceExhausted,
)
from chat_service.grpc_api.auth_interceptor import (
    CHAT_SERVICE,
    REQUIRED_SCOPES,
    AuthInterceptor,
    current_principal,
    is_public_method,
)
from chat_service.grpc_api.error_interceptor import ErrorTranslationInterceptor

DOMAIN = "chat-service.test"
SECRET_TEXT = "postgres://admin:hunter2@db"  # must never reach a client
LIMITED_TENANT = "tenant-over-limit"


class _Servicer(chat_service_pb2_grpc.ChatServiceServicer):
    """Answers with the caller's tenant, or fails in the ways under test."""

    async def GetConversation(
        self, request: chat_service_pb2.GetConversationRequest, context: Any
    ) -> chat_service_pb2.GetConversationResponse:
        principal = current_principal()
        return chat_service_pb2.GetConversationResponse(
            conversation=resources_pb2.Conversation(
                conversation_id=request.conversation_id,
                user_id=f"{principal.tenant_id}/{principal.subject}",
            )
        )

    async def ExportConversation(
        self, request: chat_service_pb2.ExportConversationRequest, context: Any
    ) -> AsyncIterator[chat_service_pb2.ExportConversationResponse]:
        for index in range(3):
            tenant = current_principal().tenant_id
            yield chat_service_pb2.ExportConversationResponse(data=f"{tenant}:{index}\n".encode())

    async def StreamConversation(
        self,
        request_iterator: AsyncIterator[chat_service_pb2.StreamConversationRequest],
        context: Any,
    ) -> AsyncIterator[chat_service_pb2.StreamConversationResponse]:
        async for frame in request_iterator:
            yield chat_service_pb2.StreamConversationResponse(
                ack=chat_service_pb2.MessageAck(
                    message_id=f"{current_principal().tenant_id}/{frame.message.message_id}"
                )
            )

    async def SendMessage(
        self, request: chat_service_pb2.SendMessageRequest, context: Any
    ) -> chat_service_pb2.SendMessageResponse:
        raise InvalidArgument(
            [
                FieldViolation("user_id", "is required"),
                FieldViolation("content.quick_replies[2].title", "at most 20 characters"),
            ]
        )

    async def UpdateConversationStatus(
        self, request: chat_service_pb2.UpdateConversationStatusRequest, context: Any
    ) -> chat_service_pb2.UpdateConversationStatusResponse:
        raise ResourceExhausted("too many requests", reason="RATE_LIMITED", retry_after=1.5)

    async def ListConversations(
        self, request: chat_service_pb2.ListConversationsRequest, context: Any
    ) -> chat_service_pb2.ListConversationsResponse:
        raise RuntimeError(f"cannot connect to {SECRET_TEXT}")

    async def WatchConversations(
        self, request: chat_service_pb2.WatchConversationsRequest, context: Any
    ) -> AsyncIterator[chat_service_pb2.WatchConversationsResponse]:
        yield chat_service_pb2.WatchConversationsResponse(resume_token="first")
        raise RuntimeError(f"lost {SECRET_TEXT}")

    async def HandleWebhook(
        self, request: chat_service_pb2.HandleWebhookRequest, context: Any
    ) -> chat_service_pb2.HandleWebhookResponse:
        # A public method: no caller is bound, not even one left by an
        # earlier authenticated call.
        try:
            seen = current_principal().tenant_id
        except RuntimeError:
            seen = "nobody"
        return chat_service_pb2.HandleWebhookResponse(
            body=httpbody_pb2.HttpBody(content_type="text/plain", data=seen.encode())
        )

    async def ListMessages(
        self, request: chat_service_pb2.ListMessagesRequest, context: Any
    ) -> chat_service_pb2.ListMessagesResponse:
        raise NotImplementedError  # as the generated base class does

    async def VerifyWebhook(
        self, request: chat_service_pb2.VerifyWebhookRequest, context: Any
    ) -> chat_service_pb2.VerifyWebhookResponse:
        return chat_service_pb2.VerifyWebhookResponse()

    # The admin RPCs: as the generated base class does (only their scope is
    # of interest here).

    async def CreateChannelConnection(self, request: Any, context: Any) -> Any:
        raise NotImplementedError

    async def GetChannelConnection(self, request: Any, context: Any) -> Any:
        raise NotImplementedError

    async def ListChannelConnections(self, request: Any, context: Any) -> Any:
        raise NotImplementedError

    async def UpdateChannelConnection(self, request: Any, context: Any) -> Any:
        raise NotImplementedError

    async def DeleteChannelConnection(self, request: Any, context: Any) -> Any:
        raise NotImplementedError

    async def RetryDelivery(self, request: Any, context: Any) -> Any:
        raise NotImplementedError


@dataclass
class _Admissions:
    calls: list[tuple[Principal, str]] = field(default_factory=list)

    async def admit(self, principal: Principal, method: str) -> None:
        self.calls.append((principal, method))
        if principal.tenant_id == LIMITED_TENANT:
            raise ResourceExhausted("tenant over its limit", reason="RATE_LIMITED", retry_after=2)


@dataclass
class _Server:
    stub: chat_service_pb2_grpc.ChatServiceAsyncStub
    health: health_pb2_grpc.HealthStub
    channel: grpc.aio.Channel
    key: DevKey
    admissions: _Admissions

    def auth(self, tenant: str = "tenant-a", *scopes: str, **extra: str) -> list[tuple[str, str]]:
        token = self.key.mint(tenant, "alice", scopes or (SCOPE_READ, SCOPE_WRITE))
        return [("authorization", f"Bearer {token}"), *extra.items()]


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[_Server]:
    key = load_or_create_dev_key(tmp_path)
    admissions = _Admissions()
    grpc_server = grpc.aio.server(
        interceptors=[
            ErrorTranslationInterceptor(domain=DOMAIN),
            AuthInterceptor(key.verifier(), domain=DOMAIN, admit=admissions.admit),
        ]
    )
    chat_service_pb2_grpc.add_ChatServiceServicer_to_server(_Servicer(), grpc_server)
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, grpc_server)
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    await grpc_server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield _Server(
            stub=chat_service_pb2_grpc.ChatServiceStub(channel),
            health=health_pb2_grpc.HealthStub(channel),
            channel=channel,
            key=key,
            admissions=admissions,
        )
    finally:
        await channel.close(grace=None)
        await grpc_server.stop(grace=None)


def _rich_status(error: grpc.aio.AioRpcError) -> Any:
    """The google.rpc.Status of the details trailer, checked to agree with the call."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, "no google.rpc.Status in the trailers"
    assert status.code == error.code().value[0]
    assert status.message == error.details()
    return status


def _details(error: grpc.aio.AioRpcError) -> dict[str, Any]:
    """The rich status' details by type."""
    found: dict[str, ProtoMessage] = {}
    for packed in _rich_status(error).details:
        for kind in (
            error_details_pb2.ErrorInfo,
            error_details_pb2.BadRequest,
            error_details_pb2.RetryInfo,
        ):
            if packed.Is(kind.DESCRIPTOR):
                detail = kind()
                packed.Unpack(detail)
                assert kind.__name__ not in found, "each kind of detail at most once"
                found[kind.__name__] = detail
    return found


def _error_info(error: grpc.aio.AioRpcError) -> Any:
    info = _details(error)["ErrorInfo"]
    assert info.domain == DOMAIN
    return info


# ---------------------------------------------------------- authentication


async def test_authenticated_unary_call_sees_the_callers_tenant(server: _Server) -> None:
    response = await server.stub.GetConversation(
        chat_service_pb2.GetConversationRequest(conversation_id="c-1"),
        metadata=server.auth("tenant-a"),
    )
    assert response.conversation.conversation_id == "c-1"
    assert response.conversation.user_id == "tenant-a/alice"


async def test_authenticated_server_stream_sees_the_callers_tenant(server: _Server) -> None:
    call = server.stub.ExportConversation(
        chat_service_pb2.ExportConversationRequest(conversation_id="c-1"),
        metadata=server.auth("tenant-b"),
    )
    chunks = [chunk.data async for chunk in call]
    assert chunks == [b"tenant-b:0\n", b"tenant-b:1\n", b"tenant-b:2\n"]


async def _no_frames() -> AsyncIterator[chat_service_pb2.StreamConversationRequest]:
    """A client that sends nothing (until the call ends)."""
    await asyncio.Event().wait()
    yield chat_service_pb2.StreamConversationRequest()  # never reached


async def _frames(*message_ids: str) -> AsyncIterator[chat_service_pb2.StreamConversationRequest]:
    for message_id in message_ids:
        yield chat_service_pb2.StreamConversationRequest(
            message=chat_service_pb2.StreamMessage(message_id=message_id)
        )


async def test_authenticated_bidi_stream_sees_the_callers_tenant(server: _Server) -> None:
    call = server.stub.StreamConversation(_frames("m1", "m2"), metadata=server.auth("tenant-c"))
    acks = [response.ack.message_id async for response in call]
    assert acks == ["tenant-c/m1", "tenant-c/m2"]


async def test_no_token_is_unauthenticated(server: _Server) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await server.stub.GetConversation(chat_service_pb2.GetConversationRequest())
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert _error_info(raised.value).reason == "TOKEN_MISSING"


async def test_no_token_on_a_stream_is_unauthenticated(server: _Server) -> None:
    call = server.stub.StreamConversation(_frames("m1"))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call.read()
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert _error_info(raised.value).reason == "TOKEN_MISSING"


@pytest.mark.parametrize(
    ("authorization", "reason"),
    [
        ("Bearer not-a-jwt", "TOKEN_INVALID"),
        ("Basic dXNlcjpwYXNz", "TOKEN_INVALID"),
        ("Bearer ", "TOKEN_MISSING"),
    ],
    ids=["garbage", "wrong-scheme", "empty"],
)
async def test_bad_authorization_is_unauthenticated(
    server: _Server, authorization: str, reason: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await server.stub.GetConversation(
            chat_service_pb2.GetConversationRequest(), metadata=[("authorization", authorization)]
        )
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert _error_info(raised.value).reason == reason


async def test_token_from_another_key_or_expired_is_unauthenticated(
    server: _Server, tmp_path: Path
) -> None:
    stranger = load_or_create_dev_key(tmp_path / "stranger").mint("tenant-a")
    expired = server.key.mint("tenant-a", ttl_seconds=-120)
    for token, reason in ((stranger, "TOKEN_INVALID"), (expired, "TOKEN_EXPIRED")):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await server.stub.GetConversation(
                chat_service_pb2.GetConversationRequest(),
                metadata=[("authorization", f"Bearer {token}")],
            )
        assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert _error_info(raised.value).reason == reason
        assert token not in (raised.value.details() or "")


# ----------------------------------------------------------- authorization


async def test_missing_scope_is_permission_denied(server: _Server) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await server.stub.GetConversation(
            chat_service_pb2.GetConversationRequest(),
            metadata=server.auth("tenant-a", SCOPE_WRITE),
        )
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    info = _error_info(raised.value)
    assert info.reason == "INSUFFICIENT_SCOPE"
    assert dict(info.metadata) == {"required_scope": SCOPE_READ}


async def test_write_methods_need_the_write_scope(server: _Server) -> None:
    # Refused on the call's metadata, before any frame: the client sends none,
    # since a frame in flight when the server ends the call can fail on the
    # client's side first (INTERNAL "execute_batch") and hide the status.
    call = server.stub.StreamConversation(
        _no_frames(), metadata=server.auth("tenant-a", SCOPE_READ)
    )
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call.read()
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert dict(_error_info(raised.value).metadata) == {"required_scope": SCOPE_WRITE}


async def test_tenant_header_must_name_the_tokens_tenant(server: _Server) -> None:
    request = chat_service_pb2.GetConversationRequest(conversation_id="c")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await server.stub.GetConversation(
            request, metadata=server.auth("tenant-a", **{"x-tenant-id": "tenant-b"})
        )
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert _error_info(raised.value).reason == "TENANT_MISMATCH"

    response = await server.stub.GetConversation(
        request, metadata=server.auth("tenant-a", **{"x-tenant-id": "tenant-a"})
    )
    assert response.conversation.user_id == "tenant-a/alice"


async def test_admit_hook_sees_each_authenticated_call_and_can_refuse_it(
    server: _Server,
) -> None:
    await server.stub.GetConversation(
        chat_service_pb2.GetConversationRequest(), metadata=server.auth("tenant-a")
    )
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await server.stub.GetConversation(
            chat_service_pb2.GetConversationRequest(), metadata=server.auth(LIMITED_TENANT)
        )
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    details = _details(raised.value)
    assert details["ErrorInfo"].reason == "RATE_LIMITED"
    assert details["RetryInfo"].retry_delay.seconds == 2
    method = f"/{CHAT_SERVICE}/GetConversation"
    assert [(p.tenant_id, m) for p, m in server.admissions.calls] == [
        ("tenant-a", method),
        (LIMITED_TENANT, method),
    ]


# ----------------------------------------------------------- public methods


async def test_health_needs_no_token(server: _Server) -> None:
    response = await server.health.Check(health_pb2.HealthCheckRequest())
    assert response.status == health_pb2.HealthCheckResponse.SERVING
    assert server.admissions.calls == []


async def test_webhooks_need_no_token_and_see_no_caller(server: _Server) -> None:
    # An authenticated call first: its caller must not leak into the next call.
    await server.stub.GetConversation(
        chat_service_pb2.GetConversationRequest(), metadata=server.auth("tenant-a")
    )
    response = await server.stub.HandleWebhook(
        chat_service_pb2.HandleWebhookRequest(tenant_id="tenant-a", platform="slack")
    )
    assert response.body.data == b"nobody"


def test_every_chat_service_method_is_public_or_has_a_scope() -> None:
    service = chat_service_pb2.DESCRIPTOR.services_by_name["ChatService"]
    methods = {f"/{service.full_name}/{method.name}" for method in service.methods}
    public = {method for method in methods if is_public_method(method)}
    assert public == {f"/{CHAT_SERVICE}/HandleWebhook", f"/{CHAT_SERVICE}/VerifyWebhook"}
    assert methods - public == set(REQUIRED_SCOPES)


# ---------------------------------------------------------- error statuses


async def test_invalid_argument_carries_every_field_violation(server: _Server) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await server.stub.SendMessage(chat_service_pb2.SendMessageRequest(), metadata=server.auth())
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = _details(raised.value)
    assert details["ErrorInfo"].reason == "INVALID_ARGUMENT"
    violations = details["BadRequest"].field_violations
    assert [(v.field, v.description) for v in violations] == [
        ("user_id", "is required"),
        ("content.quick_replies[2].title", "at most 20 characters"),
    ]
    assert "RetryInfo" not in details


async def test_retryable_error_carries_retry_info(server: _Server) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await server.stub.UpdateConversationStatus(
            chat_service_pb2.UpdateConversationStatusRequest(), metadata=server.auth()
        )
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert raised.value.details() == "too many requests"
    delay = _details(raised.value)["RetryInfo"].retry_delay
    assert (delay.seconds, delay.nanos) == (1, 500_000_000)


async def test_unexpected_exception_is_internal_without_its_text(
    server: _Server, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.ERROR, logger="chat_service.grpc_api.error_interceptor"),
        pytest.raises(grpc.aio.AioRpcError) as raised,
    ):
        await server.stub.ListConversations(
            chat_service_pb2.ListConversationsRequest(), metadata=server.auth()
        )
    assert raised.value.code() == grpc.StatusCode.INTERNAL
    assert raised.value.details() == "internal error"
    assert _error_info(raised.value).reason == "INTERNAL"
    assert SECRET_TEXT.encode() not in _rich_status(raised.value).SerializeToString()
    # ...but the operator gets the traceback.
    assert any(
        record.exc_info and SECRET_TEXT in str(record.exc_info[1]) for record in caplog.records
    )


async def test_stream_failing_midway_ends_with_internal_after_what_it_sent(
    server: _Server,
) -> None:
    call = server.stub.WatchConversations(
        chat_service_pb2.WatchConversationsRequest(), metadata=server.auth()
    )
    first = await call.read()
    assert isinstance(first, chat_service_pb2.WatchConversationsResponse)
    assert first.resume_token == "first"
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call.read()
    assert raised.value.code() == grpc.StatusCode.INTERNAL
    assert SECRET_TEXT not in (raised.value.details() or "")
    assert _error_info(raised.value).reason == "INTERNAL"


async def test_unimplemented_method_is_unimplemented(server: _Server) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await server.stub.ListMessages(
            chat_service_pb2.ListMessagesRequest(), metadata=server.auth()
        )
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert _error_info(raised.value).reason == "UNIMPLEMENTED"


async def test_unknown_method_is_unimplemented(server: _Server) -> None:
    call = server.channel.unary_unary(f"/{CHAT_SERVICE}/NoSuchMethod", None, None)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call(b"", metadata=server.auth())
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_calls_through_one_wrapped_handler_each_see_their_own_caller(
    server: _Server,
) -> None:
    # The interceptors wrap a method's handler once (WrappingInterceptor): each
    # call's caller still comes from that call's own metadata.
    for tenant in ("tenant-a", "tenant-b", "tenant-a"):
        response = await server.stub.GetConversation(
            chat_service_pb2.GetConversationRequest(conversation_id="c-1"),
            metadata=server.auth(tenant),
        )
        assert response.conversation.user_id == f"{tenant}/alice"
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await server.stub.GetConversation(
            chat_service_pb2.GetConversationRequest(conversation_id="c-1")
        )
    assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_each_method_s_handler_is_wrapped_once(tmp_path: Path) -> None:
    interceptors = [
        ErrorTranslationInterceptor(domain=DOMAIN),
        AuthInterceptor(load_or_create_dev_key(tmp_path).verifier(), domain=DOMAIN),
    ]
    handler = grpc.unary_unary_rpc_method_handler(lambda request, context: request)

    async def continuation(details: grpc.HandlerCallDetails) -> Any:
        return handler

    @dataclass
    class Details:
        method: str
        invocation_metadata: tuple[tuple[str, str], ...] = ()

    def details(method: str) -> grpc.HandlerCallDetails:
        return Details(method)  # type: ignore[return-value]

    send = f"/{CHAT_SERVICE}/SendMessage"
    for interceptor in interceptors:
        first = await interceptor.intercept_service(continuation, details(send))
        again = await interceptor.intercept_service(continuation, details(send))
        other = await interceptor.intercept_service(
            continuation, details(f"/{CHAT_SERVICE}/ListMessages")
        )
        assert first is again
        assert first is not handler
        assert other is not first

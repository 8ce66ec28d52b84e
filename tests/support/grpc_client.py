"""Client-side helpers for tests that call the service over real gRPC."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc
from chatbot.chat.v1 import chat_service_pb2 as pb
from chatbot.chat.v1 import content_pb2, resources_pb2
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped, unused-ignore]

Metadata = tuple[tuple[str, str], ...]


def bearer(token: str, *extra: tuple[str, str]) -> Metadata:
    return (("authorization", f"Bearer {token}"), *extra)


def text_request(
    text: str = "hello",
    *,
    user_id: str = "user-1",
    message_id: str = "",
    conversation_id: str = "",
    channel: int = resources_pb2.CHANNEL_WEB,
    **fields: Any,
) -> pb.SendMessageRequest:
    return pb.SendMessageRequest(
        message_id=message_id,
        conversation_id=conversation_id,
        user_id=user_id,
        channel=channel,  # type: ignore[arg-type]
        content=content_pb2.MessageContent(type=content_pb2.MESSAGE_TYPE_TEXT, text=text),
        **fields,
    )


@dataclass(frozen=True)
class RichError:
    code: grpc.StatusCode
    message: str
    reason: str
    domain: str
    metadata: dict[str, str]
    field_violations: list[tuple[str, str]]
    retry_delay: float | None

    @property
    def fields(self) -> list[str]:
        return [field for field, _ in self.field_violations]


def rich_error(error: grpc.aio.AioRpcError) -> RichError:
    """Decode the google.rpc.Status details the service puts in the trailers."""
    raw: bytes | None = None
    trailers: Any = error.trailing_metadata() or ()  # grpc-stubs types it loosely
    for key, value in trailers:
        if key == "grpc-status-details-bin":
            raw = value
    assert raw is not None, f"no rich status in {error.code()} {error.details()!r}"
    status = status_pb2.Status.FromString(raw)
    infos: list[error_details_pb2.ErrorInfo] = []
    violations: list[tuple[str, str]] = []
    delay: float | None = None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            infos.append(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations.extend((v.field, v.description) for v in bad.field_violations)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            delay = retry.retry_delay.ToTimedelta().total_seconds()
    assert len(infos) == 1, f"expected exactly one ErrorInfo, got {len(infos)}"
    assert status.code == error.code().value[0]
    return RichError(
        code=error.code(),
        message=status.message,
        reason=infos[0].reason,
        domain=infos[0].domain,
        metadata=dict(infos[0].metadata),
        field_violations=violations,
        retry_delay=delay,
    )

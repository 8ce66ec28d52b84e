"""ChatError -> google.rpc.Status mapping (the details the integration tests decode)."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.rpc import (  # type: ignore[import-untyped, unused-ignore]
    code_pb2,
    error_details_pb2,
)
from grpc_status import rpc_status

from chat_service.domain.errors import (
    Aborted,
    ChatError,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    conversation_not_found,
)
from chat_service.grpc_api.errors import internal_error_status, to_status

DOMAIN = "chat-service"


def _unpacked(status: Any) -> list[Any]:
    kinds = (error_details_pb2.ErrorInfo, error_details_pb2.BadRequest, error_details_pb2.RetryInfo)
    details = []
    for packed in status.details:
        kind = next(kind for kind in kinds if packed.Is(kind.DESCRIPTOR))
        detail = kind()
        packed.Unpack(detail)
        details.append(detail)
    return details


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (InvalidArgument.of("f", "bad"), code_pb2.INVALID_ARGUMENT),
        (Unauthenticated("who?"), code_pb2.UNAUTHENTICATED),
        (PermissionDenied("no"), code_pb2.PERMISSION_DENIED),
        (NotFound("gone"), code_pb2.NOT_FOUND),
        (FailedPrecondition("closed"), code_pb2.FAILED_PRECONDITION),
        (Aborted("busy"), code_pb2.ABORTED),
        (ResourceExhausted("slow down"), code_pb2.RESOURCE_EXHAUSTED),
        (Unavailable("down"), code_pb2.UNAVAILABLE),
        (Unimplemented("later"), code_pb2.UNIMPLEMENTED),
        (ChatError("bare"), code_pb2.UNKNOWN),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, ChatError) else str(value),
)
def test_each_error_class_has_its_code_and_one_error_info(error: ChatError, code: int) -> None:
    status = to_status(error, domain=DOMAIN)
    assert status.code == code
    assert status.message == error.message
    infos = [d for d in _unpacked(status) if isinstance(d, error_details_pb2.ErrorInfo)]
    assert len(infos) == 1
    assert (infos[0].reason, infos[0].domain) == (error.reason, DOMAIN)


def test_subclasses_keep_their_parents_code() -> None:
    class ConversationClosed(FailedPrecondition):
        default_reason = "CONVERSATION_CLOSED"

    status = to_status(ConversationClosed("closed"), domain=DOMAIN)
    assert status.code == code_pb2.FAILED_PRECONDITION
    assert _unpacked(status)[0].reason == "CONVERSATION_CLOSED"


def test_error_metadata_goes_into_error_info() -> None:
    status = to_status(conversation_not_found("c-9"), domain=DOMAIN)
    (info,) = _unpacked(status)
    assert info.reason == "CONVERSATION_NOT_FOUND"
    assert dict(info.metadata) == {"conversation_id": "c-9"}


def test_invalid_argument_adds_one_field_violation_per_rule() -> None:
    error = InvalidArgument(
        [FieldViolation("content.text", "too long"), FieldViolation("channel", "required")]
    )
    info, bad_request = _unpacked(to_status(error, domain=DOMAIN))
    assert info.reason == "INVALID_ARGUMENT"
    assert [(v.field, v.description) for v in bad_request.field_violations] == [
        ("content.text", "too long"),
        ("channel", "required"),
    ]


def test_retry_after_adds_retry_info_and_only_then() -> None:
    with_retry = _unpacked(to_status(Unavailable("down", retry_after=0.25), domain=DOMAIN))
    assert with_retry[1].retry_delay.ToNanoseconds() == 250_000_000
    assert len(_unpacked(to_status(Unavailable("down"), domain=DOMAIN))) == 1


def test_status_converts_to_a_grpc_status_with_the_same_code() -> None:
    converted = rpc_status.to_status(to_status(NotFound("gone"), domain=DOMAIN))
    assert converted.code == grpc.StatusCode.NOT_FOUND
    assert converted.details == "gone"


def test_internal_status_is_generic() -> None:
    status = internal_error_status(domain=DOMAIN)
    assert (status.code, status.message) == (code_pb2.INTERNAL, "internal error")
    (info,) = _unpacked(status)
    assert (info.reason, info.domain) == ("INTERNAL", DOMAIN)

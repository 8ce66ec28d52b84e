"""The one place where errors become gRPC statuses (AIP-193).

Every status carries exactly one google.rpc.ErrorInfo (reason, domain,
metadata); InvalidArgument adds a google.rpc.BadRequest with one
FieldViolation per broken rule, and an error with `retry_after` adds a
google.rpc.RetryInfo. The rich status travels in the `grpc-status-details-bin`
trailer (clients decode it with grpc_status.rpc_status.from_call), and as a
plain google.rpc.Status inside a StreamConversation `error` frame.

Unexpected exceptions become INTERNAL with a fixed message: their text may
hold anything (queries, keys, another tenant's data) and is only logged.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message

# googleapis-common-protos ships .pyi files but no py.typed marker.
from google.rpc import code_pb2, error_details_pb2, status_pb2  # type: ignore[import-untyped, unused-ignore]
from grpc_status import rpc_status

from chat_service.domain.errors import (
    Aborted,
    ChatError,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)
from chat_service.grpc_api.mappers_wellknown import seconds_to_duration

INTERNAL_REASON = "INTERNAL"
INTERNAL_MESSAGE = "internal error"
UNIMPLEMENTED_REASON = "UNIMPLEMENTED"
UNIMPLEMENTED_MESSAGE = "method not implemented"

_UNKNOWN: int = code_pb2.UNKNOWN
_CODES: dict[type[ChatError], int] = {
    InvalidArgument: code_pb2.INVALID_ARGUMENT,
    Unauthenticated: code_pb2.UNAUTHENTICATED,
    PermissionDenied: code_pb2.PERMISSION_DENIED,
    NotFound: code_pb2.NOT_FOUND,
    FailedPrecondition: code_pb2.FAILED_PRECONDITION,
    Aborted: code_pb2.ABORTED,
    ResourceExhausted: code_pb2.RESOURCE_EXHAUSTED,
    Unavailable: code_pb2.UNAVAILABLE,
    Unimplemented: code_pb2.UNIMPLEMENTED,
    Internal: code_pb2.INTERNAL,
}


def status_code_of(error: ChatError) -> int:
    """The google.rpc.Code of an error, by its class (subclasses inherit it).

    A bare ChatError, which the core should never raise, is UNKNOWN.
    """
    for cls in type(error).__mro__:
        code = _CODES.get(cls)
        if code is not None:
            return code
    return _UNKNOWN


def to_status(error: ChatError, *, domain: str) -> status_pb2.Status:
    """The google.rpc.Status of an error; `domain` is the service's name."""
    details: list[Message] = [
        error_details_pb2.ErrorInfo(reason=error.reason, domain=domain, metadata=error.metadata)
    ]
    if isinstance(error, InvalidArgument):
        details.append(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=violation.field, description=violation.description
                    )
                    for violation in error.violations
                ]
            )
        )
    if error.retry_after is not None:
        details.append(
            error_details_pb2.RetryInfo(retry_delay=seconds_to_duration(error.retry_after))
        )
    return _status(status_code_of(error), error.message, details)


def internal_error_status(*, domain: str) -> status_pb2.Status:
    """INTERNAL for an unexpected exception; never carries the exception's text."""
    return _status(
        code_pb2.INTERNAL,
        INTERNAL_MESSAGE,
        [error_details_pb2.ErrorInfo(reason=INTERNAL_REASON, domain=domain)],
    )


def unimplemented_status(*, domain: str) -> status_pb2.Status:
    """UNIMPLEMENTED, for a handler that raised NotImplementedError."""
    return _status(
        code_pb2.UNIMPLEMENTED,
        UNIMPLEMENTED_MESSAGE,
        [error_details_pb2.ErrorInfo(reason=UNIMPLEMENTED_REASON, domain=domain)],
    )


async def abort_with_status(
    context: grpc.aio.ServicerContext[Any, Any], status: status_pb2.Status
) -> NoReturn:
    """End the call with `status`: code, message and the details trailer.

    Raises (as grpc.aio's abort always does) to unwind the handler.
    """
    grpc_status = rpc_status.to_status(status)
    await context.abort(grpc_status.code, grpc_status.details, grpc_status.trailing_metadata)


async def abort_with_error(
    context: grpc.aio.ServicerContext[Any, Any], error: ChatError, *, domain: str
) -> NoReturn:
    await abort_with_status(context, to_status(error, domain=domain))


def _status(code: int, message: str, details: Iterable[Message]) -> status_pb2.Status:
    status = status_pb2.Status(code=code, message=message)
    for detail in details:
        packed = any_pb2.Any()
        packed.Pack(detail)
        status.details.append(packed)
    return status

"""The one place where errors become gRPC statuses (AIP-193).

Every status carries exactly one google.rpc.ErrorInfo (reason, domain,
metadata); InvalidArgument adds a google.rpc.BadRequest with one
FieldViolation per broken rule, and an error with `retry_after` adds a
google.rpc.RetryInfo. The rich status travels in the `grpc-status-details-bin`
trailer (clients decode it with grpc_status.rpc_status.from_call), and as a
plain google.rpc.Status inside a StreamConversation `error` frame.

Unexpected exceptions become INTERNAL with a fixed message: their text may
hold anything (queries, keys, another tenant's data) and is only logged.

A status is bounded whatever the error holds: gRPC refuses trailers past
8 KiB by default (16 KiB at most), and a status that does not fit reaches
the client as RESOURCE_EXHAUSTED with no details. Messages quote callers'
values short already (domain.text.quote); these bounds are the backstop.
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
    AlreadyExists,
    ChatError,
    FailedPrecondition,
    FieldViolation,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)
from chat_service.protomap.wellknown import seconds_to_duration

INTERNAL_REASON = "INTERNAL"
INTERNAL_MESSAGE = "internal error"
UNIMPLEMENTED_REASON = "UNIMPLEMENTED"
UNIMPLEMENTED_MESSAGE = "method not implemented"

# UTF-8 bytes; the status message also travels percent-encoded in grpc-message.
MAX_MESSAGE_BYTES = 400
MAX_FIELD_BYTES = 200
MAX_DESCRIPTION_BYTES = 400
MAX_METADATA_VALUE_BYTES = 200
# Field violations are kept, in order, while their fields and descriptions
# fit in this; the number left out is ErrorInfo metadata OMITTED_VIOLATIONS.
VIOLATIONS_BUDGET_BYTES = 2048
OMITTED_VIOLATIONS = "omitted_violations"

_UNKNOWN: int = code_pb2.UNKNOWN
_CODES: dict[type[ChatError], int] = {
    InvalidArgument: code_pb2.INVALID_ARGUMENT,
    Unauthenticated: code_pb2.UNAUTHENTICATED,
    PermissionDenied: code_pb2.PERMISSION_DENIED,
    NotFound: code_pb2.NOT_FOUND,
    AlreadyExists: code_pb2.ALREADY_EXISTS,
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
    """The google.rpc.Status of an error; `domain` is the service's name.

    Bounded (see the module's docstring): long texts are cut, and field
    violations past the budget are left out and counted.
    """
    metadata = {
        key: _clip(value, MAX_METADATA_VALUE_BYTES) for key, value in error.metadata.items()
    }
    violations: list[error_details_pb2.BadRequest.FieldViolation] = []
    if isinstance(error, InvalidArgument):
        violations = _bounded_violations(error.violations)
        omitted = len(error.violations) - len(violations)
        if omitted:
            metadata[OMITTED_VIOLATIONS] = str(omitted)
    details: list[Message] = [
        error_details_pb2.ErrorInfo(reason=error.reason, domain=domain, metadata=metadata)
    ]
    if isinstance(error, InvalidArgument):
        details.append(error_details_pb2.BadRequest(field_violations=violations))
    if error.retry_after is not None:
        details.append(
            error_details_pb2.RetryInfo(retry_delay=seconds_to_duration(error.retry_after))
        )
    return _status(status_code_of(error), _clip(error.message, MAX_MESSAGE_BYTES), details)


def _bounded_violations(
    violations: Iterable[FieldViolation],
) -> list[error_details_pb2.BadRequest.FieldViolation]:
    kept: list[error_details_pb2.BadRequest.FieldViolation] = []
    spent = 0
    for violation in violations:
        field = _clip(violation.field, MAX_FIELD_BYTES)
        description = _clip(violation.description, MAX_DESCRIPTION_BYTES)
        spent += len(field.encode()) + len(description.encode())
        if kept and spent > VIOLATIONS_BUDGET_BYTES:
            break
        kept.append(
            error_details_pb2.BadRequest.FieldViolation(field=field, description=description)
        )
    return kept


def _clip(text: str, limit: int) -> str:
    """`text` cut to at most `limit` UTF-8 bytes, "..." marking a cut."""
    encoded = text.encode()
    if len(encoded) <= limit:
        return text
    return encoded[: limit - 3].decode(errors="ignore") + "..."


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

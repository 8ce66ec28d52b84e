"""The errors the core raises; grpc_api/errors.py maps each to a gRPC status.

Every error has a reason (UPPER_SNAKE_CASE, sent as google.rpc.ErrorInfo's
reason) and a message safe to show to the caller.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One broken rule; `field` is the path in the request, e.g. `content.media.url`."""

    field: str
    description: str


# A watch's resume position is older than the event log keeps (outbox
# retention): resuming cannot work, the client starts a new watch.
RESUME_TOKEN_EXPIRED = "RESUME_TOKEN_EXPIRED"  # noqa: S105 (an error reason)


class ChatError(Exception):
    """Base of the errors a caller may see."""

    default_reason = "ERROR"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        retry_after: float | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.retry_after = retry_after
        self.metadata: Mapping[str, str] = dict(metadata or {})


class InvalidArgument(ChatError):
    default_reason = "INVALID_ARGUMENT"

    def __init__(
        self,
        violations: Sequence[FieldViolation],
        message: str | None = None,
        *,
        reason: str | None = None,
    ) -> None:
        self.violations = tuple(violations)
        if message is None:
            fields = ", ".join(v.field for v in self.violations)
            message = f"invalid request: {fields}" if fields else "invalid request"
        super().__init__(message, reason=reason)

    @classmethod
    def of(cls, field: str, description: str, *, reason: str | None = None) -> InvalidArgument:
        return cls([FieldViolation(field, description)], f"{field}: {description}", reason=reason)


class Unauthenticated(ChatError):
    default_reason = "UNAUTHENTICATED"


class PermissionDenied(ChatError):
    default_reason = "PERMISSION_DENIED"


class NotFound(ChatError):
    default_reason = "NOT_FOUND"


class AlreadyExists(ChatError):
    default_reason = "ALREADY_EXISTS"


class FailedPrecondition(ChatError):
    default_reason = "FAILED_PRECONDITION"


class Aborted(ChatError):
    """A concurrency conflict; the caller may retry (with backoff)."""

    default_reason = "ABORTED"


class ResourceExhausted(ChatError):
    default_reason = "RESOURCE_EXHAUSTED"


class Unavailable(ChatError):
    """A dependency (the store, Redis) is down; the caller may retry."""

    default_reason = "UNAVAILABLE"


class Unimplemented(ChatError):
    default_reason = "UNIMPLEMENTED"


class Internal(ChatError):
    """A bug on our side, reported where the caller must still be told (a
    stream that cannot go on); its message never carries the cause."""

    default_reason = "INTERNAL"

    def __init__(self) -> None:
        super().__init__("internal error")


def conversation_not_found(conversation_id: str) -> NotFound:
    # The same answer whether the conversation does not exist or belongs to
    # another tenant, so that its existence is not revealed.
    return NotFound(
        f"conversation {conversation_id!r} not found",
        reason="CONVERSATION_NOT_FOUND",
        metadata={"conversation_id": conversation_id},
    )

"""Port failures as the errors a caller sees.

Adapters raise the port's own exceptions (StoreUnavailable, LockTimeout,
...); use cases run inside `port_errors()` so that callers only ever see
ChatError subclasses, whichever adapter is wired in.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from chat_service.domain.errors import (
    RESUME_TOKEN_EXPIRED,
    Aborted,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)
from chat_service.ports import (
    CoordinationUnavailable,
    DuplicateMessage,
    EventsPruned,
    LockTimeout,
    StoreRejected,
    StoreUnavailable,
    VersionConflict,
)

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 1.0


@contextmanager
def port_errors() -> Iterator[None]:
    try:
        yield
    except StoreUnavailable as exc:
        raise Unavailable(
            "the conversation store is unavailable; retry later",
            reason="STORE_UNAVAILABLE",
            retry_after=RETRY_AFTER_SECONDS,
        ) from exc
    except EventsPruned as exc:
        # Only the event log is read after a position: a watch resuming from
        # (or falling) further back than the outbox retention keeps.
        raise FailedPrecondition(
            "the resume token is older than the event log's retention; start a new watch "
            "without it",
            reason=RESUME_TOKEN_EXPIRED,
        ) from exc
    except CoordinationUnavailable as exc:
        raise Unavailable(
            "coordination (locks, rate limits) is unavailable; retry later",
            reason="COORDINATION_UNAVAILABLE",
            retry_after=RETRY_AFTER_SECONDS,
        ) from exc
    except DuplicateMessage as exc:
        # Two writers raced on one message (a claim that outlived its TTL):
        # the other one's write stood, ours wrote nothing.
        raise Aborted(
            "this message was written concurrently by another request; retry",
            reason="CONCURRENT_WRITE",
            retry_after=RETRY_AFTER_SECONDS,
        ) from exc
    except VersionConflict as exc:
        # Another writer changed the conversation although we held its lock
        # (the lock was lost, e.g. a lease expired): nothing was written.
        raise Aborted(
            "the conversation changed concurrently; retry",
            reason="CONVERSATION_CHANGED",
            retry_after=RETRY_AFTER_SECONDS,
        ) from exc
    except LockTimeout as exc:
        raise Aborted(
            "the conversation is busy with other messages; retry later",
            reason="CONVERSATION_BUSY",
            retry_after=RETRY_AFTER_SECONDS,
        ) from exc
    except StoreRejected as exc:
        # The caller's input, past what validation knows of the store's
        # limits: not INTERNAL, and not retryable. The store's own words stay
        # in the log (they may quote anything).
        log.warning("the store refused a request: %s", exc)
        if exc.too_large:
            raise ResourceExhausted(
                "the request makes a record larger than the store can hold",
                reason="STORE_LIMIT_EXCEEDED",
            ) from exc
        raise InvalidArgument(
            [FieldViolation("request", "holds a value the store cannot take")],
            reason="STORE_REJECTED_VALUE",
        ) from exc

"""Port failures as the errors a caller sees.

Adapters raise the port's own exceptions (StoreUnavailable, LockTimeout,
...); use cases run inside `port_errors()` so that callers only ever see
ChatError subclasses, whichever adapter is wired in.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from chat_service.domain.errors import Aborted, Unavailable
from chat_service.ports import (
    CoordinationUnavailable,
    DuplicateMessage,
    LockTimeout,
    StoreUnavailable,
    VersionConflict,
)

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

"""Bounds on long-lived calls (streams and watches): how many a tenant may
hold open, how long their token lets them run, and how they end when the
server drains.

Every such ending is resumable: the stream or watch adds where to resume
(`resume_after_sequence`, `resume_token`) to the error's metadata.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from chat_service.domain.errors import ChatError, ResourceExhausted, Unauthenticated, Unavailable

# The same reason the verifier gives a token that expired before the call.
TOKEN_EXPIRED = "TOKEN_EXPIRED"  # noqa: S105 (a reason, not a secret)
SERVER_DRAINING = "SERVER_DRAINING"


class TenantSlots:
    """Counts a tenant's open calls of one kind in this process; refuses one
    past `limit` (each server process enforces its own cap: the slots it
    protects, memory and subscriptions, are its own)."""

    def __init__(self, limit: int, *, kind: str, reason: str) -> None:
        self._limit = limit
        self._kind = kind
        self._reason = reason
        self._taken: dict[str, int] = {}

    def count(self, tenant_id: str) -> int:
        return self._taken.get(tenant_id, 0)

    def take(self, tenant_id: str) -> Callable[[], None]:
        """A slot, or ResourceExhausted; returns its release (idempotent)."""
        taken = self._taken.get(tenant_id, 0)
        if taken >= self._limit:
            raise ResourceExhausted(
                f"the tenant has {self._limit} {self._kind} open already; close one first",
                reason=self._reason,
                metadata={"limit": str(self._limit)},
            )
        self._taken[tenant_id] = taken + 1
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            left = self._taken[tenant_id] - 1
            if left:
                self._taken[tenant_id] = left
            else:
                del self._taken[tenant_id]

        return release


def on_expiry(valid_until: float | None, expire: Callable[[], None]) -> asyncio.TimerHandle | None:
    """Call `expire` when the wall clock passes `valid_until` (epoch seconds:
    the token's `exp` plus the verifier's leeway); None: never."""
    if valid_until is None:
        return None
    delay = max(valid_until - time.time(), 0.0)
    if delay > _FAR:
        return None  # a timer that would never fire is not worth holding
    return asyncio.get_running_loop().call_later(delay, expire)


_FAR = 10 * 365 * 24 * 3600.0


def token_expired() -> Unauthenticated:
    return Unauthenticated(
        "the token has expired; reconnect with a fresh token and resume", reason=TOKEN_EXPIRED
    )


def server_draining() -> Unavailable:
    return Unavailable(
        "the server is shutting down; reconnect (to another instance) and resume",
        reason=SERVER_DRAINING,
        retry_after=0.1,
    )


def with_metadata(error: ChatError, **extra: str) -> ChatError:
    """`error` with `extra` added to its metadata (it is raised once: updated in place)."""
    error.metadata = {**error.metadata, **extra}
    return error

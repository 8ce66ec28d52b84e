"""The ConversationLocks port, timed: how long each call waited for its
conversation's lock (acquired or timed out). Wrapped in the composition
root, so the core takes its locks as before and never knows they are measured."""

from __future__ import annotations

import time
from contextlib import AbstractAsyncContextManager
from types import TracebackType

from chat_service.ports import ConversationLocks, LockLease, LockTimeout, Metrics


class MeasuredLocks:
    """ConversationLocks: `locks`' grants, each wait's time and outcome recorded."""

    def __init__(self, locks: ConversationLocks, metrics: Metrics) -> None:
        self._locks = locks
        self._metrics = metrics

    def hold(
        self, tenant_id: str, conversation_id: str, *, timeout: float
    ) -> AbstractAsyncContextManager[LockLease]:
        return _MeasuredHold(
            self._locks.hold(tenant_id, conversation_id, timeout=timeout), self._metrics
        )


class _MeasuredHold:
    """One hold, timed around the inner __aenter__ only (a class rather than
    a generator: it is on every call's path)."""

    __slots__ = ("_inner", "_metrics")

    def __init__(self, inner: AbstractAsyncContextManager[LockLease], metrics: Metrics) -> None:
        self._inner = inner
        self._metrics = metrics

    async def __aenter__(self) -> LockLease:
        started = time.monotonic()
        try:
            lease = await self._inner.__aenter__()
        except LockTimeout:
            self._metrics.lock_waited("timeout", time.monotonic() - started)
            raise
        # Other failures (Redis down, cancellation) are no wait for the lock:
        # the RPC metrics count them.
        self._metrics.lock_waited("acquired", time.monotonic() - started)
        return lease

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        return await self._inner.__aexit__(exc_type, exc, tb)

"""The ConversationLocks port, traced: each wait for a conversation's lock
is a span (`chat.lock.wait`), so a slow call shows whether it queued behind
another. Wrapped in the composition root, like adapters/metrics' MeasuredLocks."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from types import TracebackType

from chat_service.ports import ConversationLocks, LockLease, Tracer


class TracedLocks:
    """ConversationLocks: `locks`' grants, each wait in a span of `tracer`."""

    def __init__(self, locks: ConversationLocks, tracer: Tracer) -> None:
        self._locks = locks
        self._tracer = tracer

    def hold(
        self, tenant_id: str, conversation_id: str, *, timeout: float
    ) -> AbstractAsyncContextManager[LockLease]:
        return _TracedHold(
            self._locks.hold(tenant_id, conversation_id, timeout=timeout), self._tracer
        )


class _TracedHold:
    __slots__ = ("_inner", "_tracer")

    def __init__(self, inner: AbstractAsyncContextManager[LockLease], tracer: Tracer) -> None:
        self._inner = inner
        self._tracer = tracer

    async def __aenter__(self) -> LockLease:
        with self._tracer.span("chat.lock.wait"):
            return await self._inner.__aenter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        return await self._inner.__aexit__(exc_type, exc, tb)

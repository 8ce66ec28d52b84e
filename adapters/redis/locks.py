"""ConversationLocks over Redis: one fair lease lock per (tenant, conversation)."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager

from redis.asyncio import Redis

from adapters.redis.breaker import CircuitBreaker
from adapters.redis.client import DEFAULT_PREFIX
from adapters.redis.fair_lock import LockTimings, RedisFairLocks
from chat_service.ports import LockLease


class RedisConversationLocks:
    """Waiters are served in arrival order across processes; each grant
    carries a fencing token above every earlier one of the conversation, even
    across a Redis restart that lost the data (see lock_scripts.ACQUIRE)."""

    def __init__(
        self,
        redis: Redis,
        *,
        prefix: str = DEFAULT_PREFIX,
        timings: LockTimings | None = None,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self._locks = RedisFairLocks(
            redis,
            prefix=prefix,
            namespace="lock",
            timings=timings or LockTimings(),
            breaker=breaker,
        )

    def hold(
        self, tenant_id: str, conversation_id: str, *, timeout: float
    ) -> AbstractAsyncContextManager[LockLease]:
        return self._locks.hold(_name(tenant_id, conversation_id), timeout=timeout)

    async def waiting(self, tenant_id: str, conversation_id: str) -> int:
        """Waiters queued for the conversation (for tests and diagnostics)."""
        return await self._locks.waiting(_name(tenant_id, conversation_id))


def _name(tenant_id: str, conversation_id: str) -> str:
    return f"{tenant_id}/{conversation_id}"

"""IdempotencyGuard over Redis: an exclusive, renewed claim per (tenant, key).

The claim is the fair lock without a fencing token. It is renewed while held
rather than given one generous TTL: a claim spans a whole SendMessage, engine
call included, so any fixed TTL is either too short (it lapses during a slow
call and a retry runs the message a second time) or too long (a crashed
holder's claim blocks the client's retries for that long). With renewal a
live claim never lapses and a dead one is gone within one lease.

A duplicate that waits for the claim then finds the stored result; the store
(unique message ids) stays the last line of defence should a claim ever
lapse. Keys are message ids today; platform message ids of webhooks use the
same guard with their own key scheme.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.asyncio import Redis

from adapters.redis.breaker import CircuitBreaker
from adapters.redis.client import DEFAULT_PREFIX
from adapters.redis.fair_lock import LockTimings, RedisFairLocks


class RedisIdempotencyGuard:
    def __init__(
        self,
        redis: Redis,
        *,
        prefix: str = DEFAULT_PREFIX,
        timings: LockTimings | None = None,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self._claims = RedisFairLocks(
            redis,
            prefix=prefix,
            namespace="claim",
            fenced=False,
            timings=timings or LockTimings(),
            breaker=breaker,
        )

    @asynccontextmanager
    async def claim(self, tenant_id: str, key: str, *, timeout: float) -> AsyncIterator[None]:
        async with self._claims.hold(f"{tenant_id}/{key}", timeout=timeout):
            yield

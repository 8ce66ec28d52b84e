"""Per-tenant token buckets inside one process."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from chat_service.config import RateLimit
from chat_service.ports import RateDecision


@dataclass
class _Bucket:
    tokens: float
    updated: float


class InProcessRateLimiter:
    """Token bucket per tenant; limits per tenant come from `limit_for`."""

    def __init__(
        self,
        limit_for: Callable[[str], RateLimit],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limit_for = limit_for
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    async def acquire(self, tenant_id: str, cost: int = 1) -> RateDecision:
        limit = self._limit_for(tenant_id)
        now = self._clock()
        bucket = self._buckets.get(tenant_id)
        if bucket is None:
            bucket = self._buckets[tenant_id] = _Bucket(tokens=float(limit.burst), updated=now)
        else:
            bucket.tokens = min(
                float(limit.burst), bucket.tokens + (now - bucket.updated) * limit.rate
            )
            bucket.updated = now
        if bucket.tokens >= cost:
            bucket.tokens -= cost
            return RateDecision(allowed=True)
        return RateDecision(allowed=False, retry_after=(cost - bucket.tokens) / limit.rate)

"""Per-tenant admission: the rate limit every authenticated call passes.

When the limiter's backend (Redis) is down, calls are admitted: the limit
protects the service from one tenant's excess, and refusing every tenant's
every call instead would turn a Redis outage into a full outage. What needs
Redis for correctness (conversation locks) still fails
closed with UNAVAILABLE.
"""

from __future__ import annotations

import logging
import time

from chat_service.domain.errors import ResourceExhausted
from chat_service.ports import CoordinationUnavailable, Metrics, NoMetrics, RateLimiter

log = logging.getLogger(__name__)

_WARN_EVERY_SECONDS = 10.0


class TenantAdmission:
    def __init__(self, limiter: RateLimiter, *, metrics: Metrics | None = None) -> None:
        self._limiter = limiter
        self._metrics = metrics or NoMetrics()
        self._last_warning = 0.0

    async def admit(self, tenant_id: str, cost: int = 1) -> None:
        try:
            decision = await self._limiter.acquire(tenant_id, cost)
        except CoordinationUnavailable as exc:
            self._warn(exc)
            return
        if not decision.allowed:
            self._metrics.rate_limited(tenant_id)
            raise ResourceExhausted(
                "the tenant's request rate limit is exceeded",
                reason="RATE_LIMITED",
                retry_after=max(decision.retry_after, 0.001),
                metadata={"tenant_id": tenant_id},
            )

    def _warn(self, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._last_warning >= _WARN_EVERY_SECONDS:
            self._last_warning = now
            log.warning("rate limits not enforced while their backend is down: %s", exc)

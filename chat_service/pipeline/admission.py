"""Per-tenant admission: the rate limit every authenticated call passes."""

from __future__ import annotations

from chat_service.domain.errors import ResourceExhausted
from chat_service.pipeline.errors import port_errors
from chat_service.ports import RateLimiter


class TenantAdmission:
    def __init__(self, limiter: RateLimiter) -> None:
        self._limiter = limiter

    async def admit(self, tenant_id: str, cost: int = 1) -> None:
        with port_errors():
            decision = await self._limiter.acquire(tenant_id, cost)
        if not decision.allowed:
            raise ResourceExhausted(
                "the tenant's request rate limit is exceeded",
                reason="RATE_LIMITED",
                retry_after=max(decision.retry_after, 0.001),
                metadata={"tenant_id": tenant_id},
            )

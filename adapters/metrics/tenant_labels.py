"""The opt-in `tenant` label (METRICS_TENANT_LABELS): a tenant id is a
series per value, so only the listed tenants get one of their own and every
other tenant is counted as "other". The series per metric are then at most
the list's length + 1, whatever tenants call."""

from __future__ import annotations

from collections.abc import Iterable

OTHER_TENANTS = "other"


class TenantLabels:
    """The `tenant` label of the per-tenant metrics: absent with no tenant
    listed (the metrics are then labelled as before the setting existed),
    else the tenant id when listed and "other" when not."""

    __slots__ = ("_listed", "names")

    def __init__(self, listed: Iterable[str] = ()) -> None:
        self._listed = frozenset(listed)
        # Label names to add to a per-tenant metric's own.
        self.names: tuple[str, ...] = ("tenant",) if self._listed else ()

    def values(self, tenant_id: str) -> tuple[str, ...]:
        """The label values to add for `tenant_id`: none, or one (`names`' one)."""
        if not self._listed:
            return ()
        return (tenant_id if tenant_id in self._listed else OTHER_TENANTS,)

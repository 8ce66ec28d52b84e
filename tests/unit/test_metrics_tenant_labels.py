"""The opt-in tenant label (METRICS_TENANT_LABELS): a listed tenant is its
own value, any other tenant is "other", and with nothing listed the label
is not there at all (the series are the ones dashboards knew before)."""

from __future__ import annotations

import pytest

from adapters.memory.rate_limit import InProcessRateLimiter
from adapters.metrics import PrometheusMetrics
from adapters.metrics.tenant_labels import TenantLabels
from chat_service.config import RateLimit
from chat_service.domain.enums import Channel, MessageRole
from chat_service.domain.errors import ResourceExhausted
from chat_service.pipeline.admission import TenantAdmission
from tests.builders import create_change, make_conversation, make_message


def _record(metrics: PrometheusMetrics, tenant_id: str) -> None:
    """One of each per-tenant record, for `tenant_id`."""
    conversation = make_conversation(tenant_id=tenant_id, channel=Channel.WHATSAPP)
    inbound = make_message(conversation, 1)
    reply = make_message(conversation, 2, role=MessageRole.BOT)
    metrics.committed(create_change(conversation, (inbound, reply)))
    for outcome in ("sent", "failed", "retried", "dead_lettered"):
        metrics.delivery(tenant_id, Channel.WHATSAPP, outcome)
    metrics.rate_limited(tenant_id)


def _counts(metrics: PrometheusMetrics, **tenant: str) -> list[float | None]:
    """Each per-tenant series' value, for `tenant` (no label when empty)."""
    series = [
        ("chat_messages_total", {"channel": "whatsapp", "direction": "in"}),
        ("chat_messages_total", {"channel": "whatsapp", "direction": "out"}),
        ("chat_delivery_attempts_total", {"channel": "whatsapp", "outcome": "sent"}),
        ("chat_delivery_attempts_total", {"channel": "whatsapp", "outcome": "failed"}),
        ("chat_delivery_retries_total", {"channel": "whatsapp"}),
        ("chat_delivery_dead_lettered_total", {"channel": "whatsapp"}),
        ("chat_rate_limited_total", {}),
    ]
    return [
        metrics.registry.get_sample_value(name, {**labels, **tenant}) for name, labels in series
    ]


def _tenant_values(metrics: PrometheusMetrics) -> set[str]:
    return {
        sample.labels["tenant"]
        for family in metrics.registry.collect()
        for sample in family.samples
        if "tenant" in sample.labels
    }


def test_a_listed_tenant_is_labelled_with_its_id_and_the_rest_are_other() -> None:
    metrics = PrometheusMetrics(tenant_labels=("acme", "initech"))

    _record(metrics, "acme")
    _record(metrics, "globex")
    _record(metrics, "umbrella")

    assert _counts(metrics, tenant="acme") == [1.0] * 7
    assert _counts(metrics, tenant="other") == [2.0] * 7
    # A listed tenant that never called has no series; an unlisted one never has one.
    assert _tenant_values(metrics) == {"acme", "other"}


def test_with_no_tenant_listed_there_is_no_tenant_label() -> None:
    metrics = PrometheusMetrics()

    _record(metrics, "acme")
    _record(metrics, "globex")

    assert _counts(metrics) == [2.0] * 7
    assert _tenant_values(metrics) == set()


def test_however_many_tenants_call_the_values_are_the_list_and_other() -> None:
    metrics = PrometheusMetrics(tenant_labels=("t3",))

    for index in range(50):
        metrics.rate_limited(f"t{index}")

    assert _tenant_values(metrics) == {"t3", "other"}
    rate_limited = metrics.registry.get_sample_value
    assert rate_limited("chat_rate_limited_total", {"tenant": "t3"}) == 1
    assert rate_limited("chat_rate_limited_total", {"tenant": "other"}) == 49


@pytest.mark.parametrize(
    ("listed", "tenant_id", "expected"),
    [
        (("acme",), "acme", ("acme",)),
        (("acme",), "globex", ("other",)),
        (("acme",), "Acme", ("other",)),  # ids are compared as tokens carry them
        ((), "acme", ()),
    ],
)
def test_the_label_values_of_a_tenant(
    listed: tuple[str, ...], tenant_id: str, expected: tuple[str, ...]
) -> None:
    labels = TenantLabels(listed)

    assert labels.values(tenant_id) == expected
    assert labels.names == (("tenant",) if listed else ())


async def test_a_rate_limit_refusal_is_counted_for_the_refused_tenant() -> None:
    metrics = PrometheusMetrics(tenant_labels=("acme",))
    limiter = InProcessRateLimiter(lambda tenant: RateLimit(rate=0.001, burst=1))
    admission = TenantAdmission(limiter, metrics=metrics)

    for tenant in ("acme", "globex"):
        await admission.admit(tenant)
        with pytest.raises(ResourceExhausted):
            await admission.admit(tenant)

    count = metrics.registry.get_sample_value
    assert count("chat_rate_limited_total", {"tenant": "acme"}) == 1
    assert count("chat_rate_limited_total", {"tenant": "other"}) == 1

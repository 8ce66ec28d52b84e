"""The Prometheus metrics' labels: bounded, and never a user, nor a tenant
but one METRICS_TENANT_LABELS lists.

Every method of the Metrics port is exercised with ids no label may carry;
then every series of the registry is read back: its label names come from
the allowed set, and no label value holds one of those ids. The same holds
with tenants listed, none of them the caller's: the tenant label is then
"other", and on the per-tenant metrics only.
"""

from __future__ import annotations

from typing import cast

import pytest

from adapters.metrics import MeasuredEngine, PrometheusMetrics
from adapters.metrics.prometheus import PER_TENANT
from chat_service.config import Settings
from chat_service.domain.enums import Channel, MessageRole
from chat_service.domain.events import EventType
from chat_service.ports import EngineFailure, EngineReply, EngineRequest
from tests.builders import create_change, make_conversation, make_event, make_message

TENANT = "tenant-secret-acme"
USER = "user-secret-ada"
CONVERSATION = "conv-secret-1"
IDENTIFYING = (TENANT, USER, CONVERSATION, "msg-secret")

ALLOWED_LABELS = {
    "grpc_type",
    "grpc_service",
    "grpc_method",
    "grpc_code",
    "channel",
    "direction",
    "engine",
    "outcome",
    "reason",
    "kind",
    "le",  # a histogram's buckets
}


def _exercised(tenant_labels: tuple[str, ...] = ()) -> PrometheusMetrics:
    metrics = PrometheusMetrics(tenant_labels=tenant_labels)
    conversation = make_conversation(
        tenant_id=TENANT, user_id=USER, conversation_id=CONVERSATION, channel=Channel.WHATSAPP
    )
    inbound = make_message(conversation, 1, message_id="msg-secret-in")
    reply = make_message(conversation, 2, message_id="msg-secret-out", role=MessageRole.BOT)
    fallback = make_event(conversation, EventType.FALLBACK_USED, metadata={"reason": TENANT})
    metrics.committed(create_change(conversation, (inbound, reply), (fallback,)))
    metrics.rpc_started("chatbot.chat.v1.ChatService", "SendMessage", "unary")
    metrics.rpc_handled("chatbot.chat.v1.ChatService", "SendMessage", "unary", "OK", 0.01)
    # Unbounded values a caller or an adapter could make up become "other".
    metrics.engine_called("mcp", f"unavailable for {TENANT}", 0.2)
    metrics.delivery(TENANT, Channel.WHATSAPP, USER)
    metrics.delivery(TENANT, Channel.WHATSAPP, "retried")
    metrics.delivery(TENANT, Channel.WHATSAPP, "dead_lettered")
    metrics.rate_limited(TENANT)
    metrics.gauge_open(TENANT, lambda: 3)
    metrics.gauge_open("streams", lambda: 2)
    metrics.lock_waited(f"timeout for {CONVERSATION}", 0.2)
    metrics.outbox_lag(4)
    return metrics


def test_no_label_names_a_tenant_or_a_user() -> None:
    samples = [sample for family in _exercised().registry.collect() for sample in family.samples]

    assert samples
    for sample in samples:
        assert set(sample.labels) <= ALLOWED_LABELS, sample
        for value in sample.labels.values():
            assert not any(secret in value for secret in IDENTIFYING), sample


def test_with_other_tenants_listed_a_tenant_is_other_and_only_on_per_tenant_metrics() -> None:
    metrics = _exercised(tenant_labels=("listed-1", "listed-2"))
    samples = [sample for family in metrics.registry.collect() for sample in family.samples]

    # prometheus_client adds a *_created sample per counter series.
    labelled = {s.name.removesuffix("_created") for s in samples if "tenant" in s.labels}
    assert labelled == {name.removesuffix("_total") for name in PER_TENANT} | set(PER_TENANT)
    for sample in samples:
        assert set(sample.labels) <= ALLOWED_LABELS | {"tenant"}, sample
        assert sample.labels.get("tenant", "other") == "other", sample
        for value in sample.labels.values():
            assert not any(secret in value for secret in IDENTIFYING), sample


def test_made_up_values_are_recorded_as_other() -> None:
    registry = _exercised().registry

    def value(name: str, labels: dict[str, str]) -> float | None:
        return registry.get_sample_value(name, labels)

    assert value("chat_engine_fallbacks_total", {"reason": "other"}) == 1
    assert value("chat_delivery_attempts_total", {"channel": "whatsapp", "outcome": "other"}) == 1
    assert value("chat_delivery_dead_lettered_total", {"channel": "whatsapp"}) == 1
    assert value("chat_engine_request_seconds_count", {"engine": "mcp", "outcome": "other"}) == 1
    assert value("chat_open_streams", {"kind": "other"}) == 3
    assert value("chat_open_streams", {"kind": "streams"}) == 2
    assert value("chat_lock_wait_seconds_count", {"outcome": "other"}) == 1
    assert value("chat_messages_total", {"channel": "whatsapp", "direction": "in"}) == 1
    assert value("chat_messages_total", {"channel": "whatsapp", "direction": "out"}) == 1


async def test_the_measured_engine_records_each_call_and_passes_its_failure_on() -> None:
    metrics = PrometheusMetrics()

    class Unreachable:
        name = "mcp"
        history_size = 0

        async def process(self, request: EngineRequest) -> EngineReply:
            raise EngineFailure("unavailable", "no route")

    engine = MeasuredEngine(Unreachable(), metrics)
    with pytest.raises(EngineFailure, match="unavailable"):
        await engine.process(cast(EngineRequest, None))

    assert (engine.name, engine.history_size) == ("mcp", 0)
    count = metrics.registry.get_sample_value(
        "chat_engine_request_seconds_count", {"engine": "mcp", "outcome": "unavailable"}
    )
    assert count == 1


def test_rpc_times_are_bucketed_from_a_millisecond_to_the_request_timeout() -> None:
    metrics = PrometheusMetrics()
    metrics.rpc_handled("s", "m", "unary", "OK", 0.0008)
    longest = Settings().request_timeout_ms / 1000
    metrics.rpc_handled("s", "m", "unary", "OK", longest)

    def bucket(le: str) -> float | None:
        return metrics.registry.get_sample_value(
            "grpc_server_handling_seconds_bucket",
            {"grpc_type": "unary", "grpc_service": "s", "grpc_method": "m", "le": le},
        )

    assert bucket("0.001") == 1
    assert bucket(str(float(longest))) == 2

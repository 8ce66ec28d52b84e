"""The measuring decorators the composition root puts around ports when
metrics are on: lock waits (MeasuredLocks) and the outbox relay's lag."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from adapters.memory.locks import InProcessConversationLocks
from adapters.metrics import MeasuredLocks, PrometheusMetrics
from chat_service.domain.events import OutboxEntry
from chat_service.pipeline.outbox_relay import OutboxRelay, RelaySettings
from chat_service.ports import LockTimeout, StoreUnavailable
from tests.builders import build_core, create_change, make_conversation, make_event
from tests.fakes import InMemoryStore


def _lock_waits(metrics: PrometheusMetrics, outcome: str) -> float | None:
    return metrics.registry.get_sample_value("chat_lock_wait_seconds_count", {"outcome": outcome})


async def test_each_lock_wait_is_recorded_as_acquired_or_timeout() -> None:
    metrics = PrometheusMetrics()
    locks = MeasuredLocks(InProcessConversationLocks(), metrics)

    async with locks.hold("t", "c", timeout=1.0) as lease:
        assert lease.fencing_token > 0
        with pytest.raises(LockTimeout):
            async with locks.hold("t", "c", timeout=0.01):
                pass
    # Released through the wrapper: the next hold is granted.
    async with locks.hold("t", "c", timeout=1.0):
        pass

    assert _lock_waits(metrics, "acquired") == 2
    assert _lock_waits(metrics, "timeout") == 1


async def test_an_error_inside_the_hold_still_releases_the_lock() -> None:
    metrics = PrometheusMetrics()
    inner = InProcessConversationLocks()
    locks = MeasuredLocks(inner, metrics)

    with pytest.raises(RuntimeError):
        async with locks.hold("t", "c", timeout=1.0):
            raise RuntimeError("boom")

    async with asyncio.timeout(1):
        async with inner.hold("t", "c", timeout=1.0):
            pass
    assert _lock_waits(metrics, "acquired") == 1


class _Publisher:
    async def publish(self, entries: Sequence[OutboxEntry]) -> None:
        return

    async def close(self) -> None:
        return


def _lag(metrics: PrometheusMetrics) -> float | None:
    return metrics.registry.get_sample_value("chat_outbox_lag_events", {})


async def test_the_relay_records_what_is_left_after_each_batch() -> None:
    store = InMemoryStore()
    conversation = make_conversation()
    await store.write(
        create_change(conversation, events=[make_event(conversation) for _ in range(5)])
    )
    metrics = PrometheusMetrics()
    relay = OutboxRelay(store, _Publisher(), RelaySettings(batch_size=2), metrics=metrics)

    assert _lag(metrics) == 0  # present before the first batch
    assert await relay.publish_once() == 2
    assert _lag(metrics) == 3
    assert await relay.publish_once() == 2
    assert _lag(metrics) == 1
    assert await relay.publish_once() == 1
    assert _lag(metrics) == 0


async def test_the_wired_relay_records_the_lag_in_the_service_s_metrics() -> None:
    # Through production's wiring: the relay is given the service's metrics.
    store = InMemoryStore()
    conversation = make_conversation()
    await store.write(
        create_change(conversation, events=[make_event(conversation) for _ in range(150)])
    )
    metrics = PrometheusMetrics()
    services = build_core(store=store, metrics=metrics)

    assert await services.relay.publish_once() == 100  # a batch without Kafka
    assert _lag(metrics) == 50


async def test_a_store_that_cannot_tell_the_lag_does_not_fail_the_published_batch() -> None:
    class _NoEnd(InMemoryStore):
        async def last_event_position(self) -> int:
            raise StoreUnavailable("gone for a moment")

    store = _NoEnd()
    conversation = make_conversation()
    await store.write(
        create_change(conversation, events=[make_event(conversation) for _ in range(3)])
    )
    metrics = PrometheusMetrics()
    relay = OutboxRelay(store, _Publisher(), RelaySettings(batch_size=2), metrics=metrics)

    assert await relay.publish_once() == 2  # published and marked, the lag unknown
    assert _lag(metrics) == 0
    assert relay.published == 2

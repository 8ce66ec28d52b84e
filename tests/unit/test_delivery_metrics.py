"""The delivery queue's outcomes as metrics: each attempt sent or failed,
each retry scheduled, each reply given up (dead-lettered), per channel."""

from __future__ import annotations

from datetime import timedelta

from adapters.metrics import PrometheusMetrics
from chat_service.domain.enums import Channel, DeliveryStatus
from chat_service.pipeline.delivery import DeliveryQueue
from chat_service.ports import DeliveryError
from tests.builders import T0
from tests.fakes import InMemoryStore, SteppingClock
from tests.unit.test_delivery_retries import (
    POLICY,
    ScriptedSender,
    Waits,
    status_of,
    stored_replies,
)


def _queue(
    store: InMemoryStore, sender: ScriptedSender, metrics: PrometheusMetrics
) -> DeliveryQueue:
    return DeliveryQueue(
        store=store,
        senders={Channel.WHATSAPP: sender},
        clock=SteppingClock(T0 + timedelta(days=1)),
        policy=POLICY,
        jitter=lambda: 0.5,
        sleep=Waits(),
        metrics=metrics,
    )


def _counts(metrics: PrometheusMetrics) -> dict[str, float]:
    """Attempts by outcome, retries and dead letters: three metrics, so that
    summing a metric over its labels never counts one failure twice."""

    def sample(name: str, **labels: str) -> float:
        value = metrics.registry.get_sample_value(name, {"channel": "whatsapp", **labels})
        return value or 0.0

    return {
        "sent": sample("chat_delivery_attempts_total", outcome="sent"),
        "failed": sample("chat_delivery_attempts_total", outcome="failed"),
        "retried": sample("chat_delivery_retries_total"),
        "dead_lettered": sample("chat_delivery_dead_lettered_total"),
    }


def _attempts(metrics: PrometheusMetrics) -> float:
    """sum(chat_delivery_attempts_total) over its labels."""
    return sum(
        sample.value
        for family in metrics.registry.collect()
        for sample in family.samples
        if sample.name == "chat_delivery_attempts_total"
    )


async def test_a_reply_sent_after_a_retry_counts_the_failure_the_retry_and_the_send() -> None:
    store, metrics = InMemoryStore(), PrometheusMetrics()
    sender = ScriptedSender(DeliveryError("timeout", retryable=True))
    conversation, [reply] = await stored_replies(store)

    queue = _queue(store, sender, metrics)
    queue.submit(conversation, [reply])
    assert await queue.wait_idle(1)

    assert await status_of(store, reply) is DeliveryStatus.SENT
    assert _counts(metrics) == {"sent": 1, "failed": 1, "retried": 1, "dead_lettered": 0}
    assert _attempts(metrics) == 2


async def test_a_permanent_failure_is_dead_lettered_at_once() -> None:
    store, metrics = InMemoryStore(), PrometheusMetrics()
    sender = ScriptedSender(DeliveryError("bad recipient", retryable=False))
    conversation, [reply] = await stored_replies(store)

    queue = _queue(store, sender, metrics)
    queue.submit(conversation, [reply])
    assert await queue.wait_idle(1)

    assert await status_of(store, reply) is DeliveryStatus.FAILED
    assert _counts(metrics) == {"sent": 0, "failed": 1, "retried": 0, "dead_lettered": 1}


async def test_the_last_failed_attempt_is_dead_lettered_not_retried() -> None:
    store, metrics = InMemoryStore(), PrometheusMetrics()
    failures = [DeliveryError("down", retryable=True) for _ in range(POLICY.attempts)]
    sender = ScriptedSender(*failures)
    conversation, [reply] = await stored_replies(store)

    queue = _queue(store, sender, metrics)
    queue.submit(conversation, [reply])
    assert await queue.wait_idle(1)

    attempts = POLICY.attempts
    assert _counts(metrics) == {
        "sent": 0,
        "failed": attempts,
        "retried": attempts - 1,
        "dead_lettered": 1,
    }
    assert _attempts(metrics) == attempts

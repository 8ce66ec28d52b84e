"""KafkaPublisher against a real Kafka-protocol broker (noida-db; see
tests/support/kafka.py): what a record carries, per-conversation order,
outages (at start-up and mid-run), and the outbox relay carrying 1,000
events through a broker outage.

Tests that stop a broker run one of their own (`own_broker`); the others
share the session's `kafka_broker`, each on a topic prefix of its own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import random
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient  # type: ignore[import-untyped]
from aiokafka.admin.config_resource import (  # type: ignore[import-untyped]
    ConfigResource,
    ConfigResourceType,
)

from adapters.kafka import KafkaPublisher, KafkaSettings, PublishFailed
from adapters.kafka.topics import ensure_topic
from adapters.sqlite.store import SqliteStore
from chat_service.domain.enums import ConversationStatus
from chat_service.domain.events import DomainEvent, EventType, OutboxEntry
from chat_service.pipeline.outbox_relay import OutboxRelay, RelaySettings
from chat_service.ports import ConversationChange, EventPublisher
from chat_service.protomap.events import event_to_proto
from tests.builders import (
    create_change,
    make_conversation,
    make_event,
    make_message,
    new_id,
    update_change,
)
from tests.support.kafka import (
    ConsumedEvent,
    KafkaBroker,
    create_topic,
    partition_count,
    read_events,
)

SCHEMA = b"chatbot.events.v1.ConversationEvent"

_positions = itertools.count(1)


def kafka_settings(broker: KafkaBroker, **overrides: Any) -> KafkaSettings:
    """Settings for `broker`, on a topic prefix of the test's own."""
    settings = KafkaSettings(brokers=(broker.bootstrap_servers,), topic_prefix=new_id("test"))
    return dataclasses.replace(settings, **overrides)


def outbox(events: Iterable[DomainEvent]) -> list[OutboxEntry]:
    return [OutboxEntry(next(_positions), event) for event in events]


def conversation_events(count: int) -> list[DomainEvent]:
    """A conversation's `count` events, in the order they happened: started,
    then a message each (sequence 1, 2, ...)."""
    conversation = make_conversation()
    started = make_event(
        conversation,
        EventType.CONVERSATION_STARTED,
        conversation_status=ConversationStatus.ACTIVE,
    )
    return [started] + [
        make_event(conversation, message=make_message(conversation, sequence))
        for sequence in range(1, count)
    ]


def first_occurrences(records: Sequence[ConsumedEvent]) -> list[ConsumedEvent]:
    """Records with repeats dropped by event_id, as a consumer must."""
    seen: set[str] = set()
    unique = []
    for record in records:
        if record.event.event_id not in seen:
            seen.add(record.event.event_id)
            unique.append(record)
    return unique


def assert_in_order_per_conversation(
    records: Sequence[ConsumedEvent], expected: Sequence[DomainEvent]
) -> None:
    """Each conversation's events (first occurrences) came in the order they
    were written, all on one partition and keyed by the conversation."""
    got: dict[str, list[str]] = defaultdict(list)
    partitions: dict[str, set[int]] = defaultdict(set)
    for record in first_occurrences(records):
        conversation_id = record.event.conversation_id
        assert record.key == conversation_id.encode()
        got[conversation_id].append(record.event.event_id)
        partitions[conversation_id].add(record.partition)
    want: dict[str, list[str]] = defaultdict(list)
    for event in expected:
        want[event.conversation_id].append(event.event_id)
    assert got == want
    assert all(len(used) == 1 for used in partitions.values())


async def wait_until(condition: Callable[[], bool], *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[KafkaBroker]:
    broker = KafkaBroker(tmp_path / "kafka").start()
    yield broker
    broker.stop()


# ------------------------------------------------------------------ records


async def test_each_event_is_a_record_keyed_by_its_conversation(
    kafka_broker: KafkaBroker,
) -> None:
    conversation = make_conversation()
    message = make_message(conversation, 1)
    events = [
        make_event(
            conversation,
            EventType.CONVERSATION_STARTED,
            conversation_status=ConversationStatus.ACTIVE,
        ),
        make_event(
            conversation,
            EventType.MESSAGE_RECEIVED,
            message,
            metadata={"source": "widget", "attempt": 2},
            conversation_status=ConversationStatus.ACTIVE,
        ),
    ]
    settings = kafka_settings(kafka_broker)
    publisher = KafkaPublisher(settings)
    await publisher.start()
    try:
        await publisher.publish(outbox(events))
    finally:
        await publisher.close()

    records = await read_events(kafka_broker.bootstrap_servers, settings.topic, at_least=2)

    assert settings.topic == f"{settings.topic_prefix}.conversation.events.v1"
    assert [record.event for record in records] == [event_to_proto(e) for e in events]
    for record, event in zip(records, events, strict=True):
        assert record.topic == settings.topic
        assert record.key == conversation.conversation_id.encode()
        assert record.headers == {
            "event_type": event.event_type.value.encode(),
            "schema": SCHEMA,
            "event_id": event.event_id.encode(),
        }
    assert records[1].headers["event_type"] == b"message.received"


def test_the_producer_waits_for_every_replica_and_never_duplicates_on_retry() -> None:
    # What a single test broker cannot tell apart (acks=1 would pass the
    # other tests): the options the producer is made with.
    settings = KafkaSettings(brokers=("k1:9092", " k2:9092"), topic_prefix="chatbot.platform")

    options = settings.producer_options()

    assert options["acks"] == "all"
    assert options["enable_idempotence"] is True
    assert options["linger_ms"] == 100
    assert options["bootstrap_servers"] == ["k1:9092", "k2:9092"]
    assert settings.topic == "chatbot.platform.conversation.events.v1"


async def test_the_topic_is_created_with_the_configured_partitions(
    kafka_broker: KafkaBroker,
) -> None:
    default = kafka_settings(kafka_broker)
    five = kafka_settings(kafka_broker, partitions=5)
    for settings in (default, five):
        publisher = KafkaPublisher(settings)
        await publisher.start()
        await publisher.close()

    assert await partition_count(kafka_broker.bootstrap_servers, default.topic) == 3
    assert await partition_count(kafka_broker.bootstrap_servers, five.topic) == 5


async def topic_setting(broker: KafkaBroker, topic: str, name: str) -> tuple[str, int]:
    """A topic config's value and source as the broker describes it (source
    1: set on the topic itself; 5: the broker's default)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)
    try:
        await admin.start()
        [response] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    finally:
        await admin.close()
    [(_code, _message, _type, _name, entries)] = response.resources
    [(value, source)] = [(entry[1], entry[3]) for entry in entries if entry[0] == name]
    return value, source


async def test_the_topic_is_created_with_min_insync_replicas_capped_at_its_replication(
    kafka_broker: KafkaBroker, caplog: pytest.LogCaptureFixture
) -> None:
    # acks=all waits for the in-sync replicas only: without the topic's
    # min.insync.replicas it may be the leader alone. The test cluster has
    # one broker, so the default of 2 is capped at its replication of 1,
    # with a warning, rather than making every write fail.
    settings = kafka_settings(kafka_broker)
    assert settings.min_insync_replicas == 2

    assert await ensure_topic(settings)

    value, source = await topic_setting(kafka_broker, settings.topic, "min.insync.replicas")
    assert (value, source) == ("1", 1)
    assert "min.insync.replicas 2 capped at its replication factor 1" in caplog.text


async def test_an_existing_topic_less_durable_than_asked_is_used_with_a_warning(
    kafka_broker: KafkaBroker, caplog: pytest.LogCaptureFixture
) -> None:
    settings = kafka_settings(kafka_broker)
    await create_topic(kafka_broker.bootstrap_servers, settings.topic, partitions=1)

    assert not await ensure_topic(settings)

    assert "exists with min.insync.replicas 1, below the 2 asked for" in caplog.text


def test_min_insync_replicas_above_the_replication_factor_is_refused() -> None:
    with pytest.raises(ValueError, match="min_insync_replicas"):
        KafkaSettings(brokers=("k:9092",), topic_prefix="p", replication_factor=1)
    single = KafkaSettings(
        brokers=("k:9092",), topic_prefix="p", replication_factor=1, min_insync_replicas=1
    )
    assert single.min_insync_replicas == 1


async def test_an_existing_topic_is_left_as_it_is(kafka_broker: KafkaBroker) -> None:
    settings = kafka_settings(kafka_broker)
    await create_topic(kafka_broker.bootstrap_servers, settings.topic, partitions=1)
    events = conversation_events(3)

    publisher = KafkaPublisher(settings)
    await publisher.start()
    try:
        await publisher.publish(outbox(events))
    finally:
        await publisher.close()

    assert await partition_count(kafka_broker.bootstrap_servers, settings.topic) == 1
    records = await read_events(kafka_broker.bootstrap_servers, settings.topic, at_least=3)
    assert [r.event.event_id for r in records] == [e.event_id for e in events]


async def test_two_processes_creating_the_topic_at_once_both_succeed(
    kafka_broker: KafkaBroker,
) -> None:
    settings = kafka_settings(kafka_broker)

    created = await asyncio.gather(ensure_topic(settings), ensure_topic(settings))

    assert sorted(created) == [False, True]
    assert await partition_count(kafka_broker.bootstrap_servers, settings.topic) == 3


# -------------------------------------------------------------------- order


async def test_each_conversation_keeps_its_order_across_batches(
    kafka_broker: KafkaBroker,
) -> None:
    # 12 conversations of 24 events, published in 8 batches that interleave
    # them; each batch is handed over shuffled, and must still go out in
    # outbox (position) order.
    conversations = [conversation_events(24) for _ in range(12)]
    entries = outbox(event for step in zip(*conversations, strict=True) for event in step)
    settings = kafka_settings(kafka_broker)
    publisher = KafkaPublisher(settings)
    shuffler = random.Random(5)
    try:
        for start in range(0, len(entries), 36):
            batch = entries[start : start + 36]
            shuffler.shuffle(batch)
            await publisher.publish(batch)
    finally:
        await publisher.close()

    records = await read_events(
        kafka_broker.bootstrap_servers, settings.topic, at_least=len(entries)
    )

    assert len(records) == len(entries)
    assert_in_order_per_conversation(records, [entry.event for entry in entries])
    assert len({record.partition for record in records}) > 1


# ------------------------------------------------------------------ outages


async def test_publish_fails_within_seconds_while_the_broker_is_down_then_recovers(
    own_broker: KafkaBroker,
) -> None:
    # A publish cut by the outage fails within delivery_timeout_seconds (5 s
    # by default; shorter here, as the relay test has it, to spare the wait).
    settings = kafka_settings(own_broker, delivery_timeout_seconds=1.5)
    # Three conversations going on before, during and after the outage.
    conversations = [conversation_events(12) for _ in range(3)]
    entries = outbox(event for step in zip(*conversations, strict=True) for event in step)
    before, during, after = entries[:12], entries[12:24], entries[24:]
    publisher = KafkaPublisher(settings)
    try:
        await publisher.publish(before)
        await asyncio.to_thread(own_broker.stop)

        started = time.monotonic()
        with pytest.raises(PublishFailed):
            await publisher.publish(during)
        assert time.monotonic() - started < 2 * settings.delivery_timeout_seconds

        await asyncio.to_thread(own_broker.start)
        # As the relay would: the failed batch again, then the next one, on
        # the same publisher.
        await publisher.publish(during)
        await publisher.publish(after)
    finally:
        await publisher.close()

    records = await read_events(own_broker.bootstrap_servers, settings.topic, at_least=36)
    assert_in_order_per_conversation(records, [entry.event for entry in entries])
    # The failed publish left nothing queued to go out later as well.
    assert len(records) == len(entries)


async def test_starts_while_kafka_is_down_and_publishes_once_it_is_up(
    tmp_path: Path,
) -> None:
    broker = KafkaBroker(tmp_path / "kafka")  # not started yet
    settings = kafka_settings(broker)
    entries = outbox(conversation_events(5))
    publisher = KafkaPublisher(settings)
    try:
        started = time.monotonic()
        await publisher.start()  # logs, does not raise: the service serves on
        with pytest.raises(PublishFailed):
            await publisher.publish(entries)
        assert time.monotonic() - started < 10

        await asyncio.to_thread(broker.start)
        await publisher.publish(entries)
    finally:
        await publisher.close()
    try:
        # The topic was created once the broker was there, as configured.
        assert await partition_count(broker.bootstrap_servers, settings.topic) == 3
        records = await read_events(broker.bootstrap_servers, settings.topic, at_least=5)
        assert [r.event.event_id for r in records] == [e.event.event_id for e in entries]
    finally:
        await asyncio.to_thread(broker.stop)


# ------------------------------------------------------------ relay, end to end


class FailureCountingPublisher:
    """The real publisher, counting the publishes that raised (so that the
    test can tell the outage was felt)."""

    def __init__(self, inner: EventPublisher) -> None:
        self.inner = inner
        self.failures = 0

    async def publish(self, entries: Sequence[OutboxEntry]) -> None:
        try:
            await self.inner.publish(entries)
        except Exception:
            self.failures += 1
            raise

    async def close(self) -> None:
        await self.inner.close()


def conversation_load(
    conversations: int, events_each: int
) -> tuple[list[ConversationChange], list[DomainEvent]]:
    """Changes as the pipeline writes them, conversations interleaved: each
    created with its first message, then one message per change. Returns the
    changes in write order and their events in the same order."""
    per_conversation: list[list[ConversationChange]] = []
    for _ in range(conversations):
        conversation = make_conversation()
        first = make_message(conversation, 1)
        change = create_change(
            conversation,
            [first],
            [
                make_event(conversation, EventType.CONVERSATION_STARTED),
                make_event(conversation, message=first),
            ],
        )
        changes = [change]
        for sequence in range(2, events_each):
            message = make_message(conversation, sequence)
            change = update_change(
                change.conversation, [message], [make_event(conversation, message=message)]
            )
            changes.append(change)
        per_conversation.append(changes)
    in_order = [c for step in zip(*per_conversation, strict=True) for c in step]
    return in_order, [event for change in in_order for event in change.events]


async def test_the_relay_delivers_every_event_in_order_through_a_broker_outage(
    own_broker: KafkaBroker, tmp_path: Path
) -> None:
    changes, events = conversation_load(conversations=20, events_each=50)
    assert len(events) == 1000
    store = await SqliteStore.open(tmp_path / "x.db")
    settings = kafka_settings(own_broker, delivery_timeout_seconds=1.0)
    publisher = FailureCountingPublisher(KafkaPublisher(settings))
    relay_settings = RelaySettings(batch_size=100, idle_poll_seconds=0.05, max_backoff_seconds=0.5)
    relay = OutboxRelay(store, publisher, relay_settings)

    async def write(part: Sequence[ConversationChange]) -> None:
        for change in part:
            await store.write(change)
            relay.wake()

    relaying = asyncio.create_task(relay.run())
    try:
        half = len(changes) // 2
        await write(changes[:half])
        await wait_until(lambda: relay.published > 0, timeout=10, what="a first batch")
        # The broker goes away while the relay is busy and the load goes on.
        await asyncio.to_thread(own_broker.stop)
        await write(changes[half:])
        await wait_until(
            lambda: publisher.failures >= 2, timeout=15, what="the relay to feel the outage"
        )
        await asyncio.to_thread(own_broker.start)
        await wait_until(
            lambda: relay.published == len(events), timeout=20, what="the outbox to drain"
        )
    finally:
        relaying.cancel()
        await asyncio.gather(relaying, return_exceptions=True)
        await publisher.close()

    try:
        # Nothing is left unpublished (the relay's own leases included).
        assert await store.claim_outbox(relay.owner, limit=10, lease_seconds=1) == []
    finally:
        await store.close()
    records = await read_events(
        own_broker.bootstrap_servers, settings.topic, at_least=len(events), timeout=15
    )
    unique = first_occurrences(records)
    assert len(unique) == len(events)
    # Repeats come only from the batch the broker went away under (some of
    # it acknowledged, then all of it published again): failed attempts
    # leave nothing queued to go out once the broker is back.
    assert len(records) - len(unique) <= relay_settings.batch_size
    assert {r.event.event_id for r in unique} == {e.event_id for e in events}
    assert_in_order_per_conversation(records, events)
    # Each conversation's sequences, as the events carry them, only grow.
    sequences: dict[str, list[int]] = defaultdict(list)
    for record in unique:
        sequences[record.event.conversation_id].append(record.event.sequence)
    assert all(seq == sorted(seq) and len(set(seq)) == len(seq) for seq in sequences.values())

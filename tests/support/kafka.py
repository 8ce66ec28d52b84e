"""The Kafka the tests run against: noida-db's Kafka-protocol broker (no
genuine Kafka installs here), started on a free loopback port.

KafkaBroker starts it on a data directory, waits until a Kafka client can
fetch the cluster's metadata, and stops or restarts it on the same port and
data, for outage tests. Its methods block; from a test's event loop call
them through asyncio.to_thread (the readiness check runs an event loop of
its own).

`read_events` reads a topic from the beginning with a plain consumer
(assign + seek, no consumer group: a group join costs time and proves
nothing here) and decodes each value as a ConversationEvent.

As a pytest plugin (`pytest_plugins = ["tests.support.kafka"]` in
tests/conftest.py) this module provides the fixture `kafka_broker`: one
broker for the whole session. A test that stops a broker starts one of its
own instead, so that a failure half-way cannot leave the shared one down.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition  # type: ignore[import-untyped]
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]
from aiokafka.structs import ConsumerRecord  # type: ignore[import-untyped]
from chatbot.events.v1.conversation_event_pb2 import ConversationEvent

from tests.support.local_server import LocalServer


def noida_db_executable() -> Path:
    """The broker binary inside the noida-db wheel. Run directly rather than
    through the `noida-db` console script, which runs it as a child and, on
    SIGTERM, exits without stopping it."""
    binary = Path(str(files("noida_db").joinpath("noida-db")))
    if not binary.is_file():
        raise RuntimeError("noida-db is not installed: pip install -e '.[dev]'")
    return binary


class KafkaBroker(LocalServer):
    name = "noida-db broker"
    log_name = "noida-db.log"

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> KafkaBroker:
        """noida-db prints a `GLIBC_2.39 not found` warning at start and runs
        anyway. Blocks (the readiness check runs an event loop of its own)."""
        _refuse_inside_event_loop()
        return super().start(timeout)

    def command(self) -> list[str]:
        data = self.data_dir / "data"
        data.mkdir(parents=True, exist_ok=True)
        return [
            str(noida_db_executable()),
            "start",
            "--host",
            "127.0.0.1",
            "--only",
            "kafka",
            "--kafka-port",
            str(self.port),
            "--data-dir",
            str(data),
        ]

    def stop(self, timeout: float = 10.0) -> None:
        """noida-db's own `stop kafka` first: after a bare SIGTERM it goes on
        acknowledging produce requests for up to ~160 ms and loses those
        after its last snapshot (acknowledged records gone on restart, seen
        in outage tests). `stop kafka` closes the port, then saves everything
        acknowledged; clients see the same outage."""
        if self._process is not None and self._process.poll() is None:
            subprocess.run(
                [
                    str(noida_db_executable()),
                    "stop",
                    "kafka",
                    "--data-dir",
                    str(self.data_dir / "data"),
                ],
                check=False,
                capture_output=True,
                timeout=timeout,
            )
        super().stop(timeout)

    def ready(self) -> bool:
        asyncio.run(_fetch_metadata(self.bootstrap_servers))
        return True


def _refuse_inside_event_loop() -> None:
    # The readiness check runs an event loop; it cannot inside another one.
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise RuntimeError("KafkaBroker.start blocks: call it through asyncio.to_thread")


async def _fetch_metadata(bootstrap_servers: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=2_000)
    try:
        await admin.start()
        await admin.describe_cluster()
    finally:
        await admin.close()


async def create_topic(bootstrap_servers: str, topic: str, *, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    try:
        await admin.start()
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()


async def partition_count(bootstrap_servers: str, topic: str) -> int:
    """How many partitions `topic` has (0: no such topic)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    try:
        await admin.start()
        if topic not in await admin.list_topics():
            return 0
        (described,) = await admin.describe_topics([topic])
        return len(described["partitions"])
    finally:
        await admin.close()


@dataclass(frozen=True, slots=True)
class ConsumedEvent:
    """One record of the events topic, its value decoded."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    headers: dict[str, bytes]
    event: ConversationEvent


async def read_events(
    bootstrap_servers: str, topic: str, *, at_least: int, timeout: float = 10.0
) -> list[ConsumedEvent]:
    """Every record of `topic` from the beginning: reads until it has at least
    `at_least` distinct events (by event id: a duplicate, which delivery at
    least once makes after an outage, must not stand in for an event still
    on its way) and has reached the end of every partition, or until
    `timeout` seconds passed (then returns what it has; the caller's count
    check fails). Records are in partition order, each partition's in
    offset order."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        request_timeout_ms=5_000,
    )
    await consumer.start()
    try:
        async with asyncio.timeout(timeout):
            partitions = await _partitions(consumer, topic)
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        by_partition: dict[int, list[ConsumedEvent]] = {tp.partition: [] for tp in partitions}
        seen: set[str] = set()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            batches = await consumer.getmany(*partitions, timeout_ms=200)
            for tp, records in batches.items():
                consumed = [_consumed(record) for record in records]
                by_partition[tp.partition].extend(consumed)
                seen.update(event.event.event_id for event in consumed)
            if len(seen) >= at_least and await _at_end(consumer, partitions):
                break
        return [record for p in sorted(by_partition) for record in by_partition[p]]
    finally:
        await consumer.stop()


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    # The consumer knows a topic's partitions once its metadata is fetched.
    while True:
        await consumer.topics()
        numbers = consumer.partitions_for_topic(topic)
        if numbers:
            return [TopicPartition(topic, number) for number in sorted(numbers)]
        await asyncio.sleep(0.05)


async def _at_end(consumer: AIOKafkaConsumer, partitions: list[TopicPartition]) -> bool:
    ends = await consumer.end_offsets(partitions)
    for tp in partitions:
        position: int = await consumer.position(tp)
        if position < ends[tp]:
            return False
    return True


def _consumed(record: ConsumerRecord) -> ConsumedEvent:
    event = ConversationEvent()
    event.ParseFromString(record.value)
    return ConsumedEvent(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=record.key,
        headers=dict(record.headers),
        event=event,
    )


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    broker = KafkaBroker(tmp_path_factory.mktemp("kafka")).start()
    yield broker
    broker.stop()

"""EventPublisher on Kafka: the outbox relay's events, one record each, on
`<KAFKA_TOPIC_PREFIX>.conversation.events.v1`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]

from adapters.kafka.records import EventRecord, event_record
from adapters.kafka.settings import KafkaSettings
from adapters.kafka.topics import ensure_topic
from chat_service.domain.events import OutboxEntry

log = logging.getLogger(__name__)


class PublishFailed(Exception):
    """Kafka did not acknowledge every record of a publish. The events stay
    in the outbox and the relay publishes them again later."""


class KafkaPublisher:
    """Publishes outbox entries with an idempotent producer (acks=all).

    Delivery is at least once. `publish` returns only when the broker has
    acknowledged every record, and raises otherwise; the relay then
    publishes the whole batch again, so records acknowledged the first time
    go out twice. Consumers drop duplicates by event_id (a header, and a
    field of the value).

    Order. A record's key is its conversation id, so a conversation's events
    share a partition. Each publish queues its records in outbox order, one
    publish at a time, and the idempotent producer keeps each partition's
    records in order through its own retries. A failed publish is retried
    from its oldest event, so each conversation's events, first occurrences
    counted, arrive in outbox order.

    Failures. A publish that fails leaves nothing behind: the producer is
    dropped with whatever it still had queued (those events are in the
    outbox), and the next publish starts a new one. Left alone, an
    idempotent aiokafka producer would retry the queued records for as long
    as the broker is away, and deliver every failed attempt's records once
    it is back: duplicates and memory that grow with the outage. A new
    producer is also the way back from aiokafka's fatal errors, after which
    a producer never sends again.

    Outages. When Kafka cannot be reached, `start` logs and returns, and
    `publish` raises: at once when there is no connection to make, within
    `delivery_timeout_seconds` when the broker goes during a publish (plus
    up to a request timeout to give up a stalled connection). The service
    keeps serving while events wait in the outbox.

    The topic is created when missing (settings.partitions, default 3, with
    min.insync.replicas so that acks=all means several brokers; topics.py)
    before the first producer starts; until that succeeds, every publish
    tries again first.
    """

    def __init__(self, settings: KafkaSettings) -> None:
        self._settings = settings
        self._producer: AIOKafkaProducer | None = None
        self._topic_ready = False
        # One publish at a time: a batch's records must not interleave with
        # another batch's, or outbox order is lost.
        self._lock = asyncio.Lock()

    @property
    def topic(self) -> str:
        return self._settings.topic

    async def start(self) -> None:
        """Creates the topic if missing and starts the producer now rather than
        at the first publish. Does not raise when Kafka is out of reach: the
        service serves without it, and `publish` tries again."""
        async with self._lock:
            try:
                async with asyncio.timeout(self._settings.delivery_timeout_seconds):
                    await self._ready_producer()
            except Exception as error:
                log.warning("Kafka unavailable at start (%r); events wait in the outbox", error)

    async def publish(self, entries: Sequence[OutboxEntry]) -> None:
        if not entries:
            return
        ordered = sorted(entries, key=lambda entry: entry.position)
        records = [event_record(entry.event) for entry in ordered]
        async with self._lock:
            await self._publish(records)

    async def close(self) -> None:
        async with self._lock:
            producer, self._producer = self._producer, None
            if producer is not None:
                # Every publish waited for its acknowledgements, so nothing is
                # queued: stop() only closes the connections.
                await producer.stop()

    async def _publish(self, records: Sequence[EventRecord]) -> None:
        timeout = self._settings.delivery_timeout_seconds
        deliveries: list[asyncio.Future[object]] = []
        try:
            async with asyncio.timeout(timeout):
                producer = await self._ready_producer()
                for record in records:
                    # send() queues the record and returns its delivery; in
                    # turn, so that the queue keeps the records' order.
                    deliveries.append(
                        await producer.send(
                            self._settings.topic,
                            value=record.value,
                            key=record.key,
                            headers=list(record.headers),
                        )
                    )
                await asyncio.gather(*deliveries)
        except BaseException as error:
            # Cancelled too (a shutdown): whatever this publish queued must
            # not linger in the producer.
            for delivery in deliveries:
                # No one waits for it any more; cancelled, it cannot fail
                # unobserved later.
                delivery.cancel()
            await self._drop_producer()
            if isinstance(error, TimeoutError):
                raise PublishFailed(
                    f"Kafka did not acknowledge {len(records)} events within {timeout}s"
                ) from error
            if isinstance(error, Exception):
                raise PublishFailed(
                    f"Kafka did not take {len(records)} events: {error!r}"
                ) from error
            raise

    async def _ready_producer(self) -> AIOKafkaProducer:
        if not self._topic_ready:
            await self._ensure_topic()
        if self._producer is not None:
            return self._producer
        producer = AIOKafkaProducer(**self._settings.producer_options())
        try:
            await producer.start()
        except BaseException:
            # Not started, so nothing is queued: stop() only closes what
            # connections start() opened.
            await producer.stop()
            raise
        self._producer = producer
        return producer

    async def _ensure_topic(self) -> None:
        # Best effort: a topic made by its operators, or by a broker that
        # creates topics on first use, needs none of this.
        try:
            await ensure_topic(self._settings)
        except Exception as error:
            log.warning(
                "could not make sure Kafka topic %s exists (%r); will try again",
                self._settings.topic,
                error,
            )
            return
        self._topic_ready = True

    async def _drop_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is None:
            return
        try:
            await _stop_without_flushing(producer)
        except Exception:
            log.warning("error while dropping the Kafka producer", exc_info=True)


async def _stop_without_flushing(producer: AIOKafkaProducer) -> None:
    """Stops `producer` at once, dropping the records it still has queued.

    aiokafka has no public way to do this: stop() first waits until every
    queued record is acknowledged, which for an idempotent producer, while
    the broker is away, is never. So stop its sender first (it waits for the
    requests in flight, at most a request timeout; their records go back to
    the queue), empty the queue, and stop() has nothing left to wait for.
    Relies on aiokafka internals of 0.14, which is why pyproject.toml pins
    aiokafka exactly; the outage tests in
    tests/integration/test_kafka_publisher.py fail if they change.
    """
    await producer._sender.close()
    producer._message_accumulator._batches.clear()
    await producer.stop()

"""How the service talks to Kafka: brokers, topic, and the producer's timing."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

EVENTS_TOPIC_SUFFIX = "conversation.events.v1"


def events_topic(prefix: str) -> str:
    """`<KAFKA_TOPIC_PREFIX>.conversation.events.v1`."""
    return f"{prefix}.{EVENTS_TOPIC_SUFFIX}"


@dataclass(frozen=True, slots=True)
class KafkaSettings:
    """`brokers` and `topic_prefix` come from KAFKA_BROKERS (a comma list,
    split by chat_service.config) and KAFKA_TOPIC_PREFIX.

    Timing. An idempotent aiokafka producer retries a record until the broker
    acknowledges it, however long that takes; the publisher bounds each
    publish by `delivery_timeout_seconds` instead, so that while Kafka is
    down the relay fails within seconds and backs off, and the events wait
    in the outbox. Five seconds is far above a healthy acknowledgement (a
    few milliseconds after the linger) and rides out a partition leader
    moving; a publish that is only slow costs a retry and some duplicates,
    which consumers drop by event_id.
    """

    brokers: Sequence[str]
    topic_prefix: str
    # Used only when the publisher creates the topic; an existing topic is
    # left as it is (topics.py warns when it is less durable than these).
    partitions: int = 3
    # None: min(3, the brokers in the cluster).
    replication_factor: int | None = None
    # The topic's min.insync.replicas: how many replicas must have a record
    # before acks=all acknowledges it. Capped at the replication factor
    # (above it no write could ever succeed), with a warning, which is what
    # lets the default run on a single-broker development cluster.
    min_insync_replicas: int = 2
    # The seed's "event publishing: 100ms window".
    linger_ms: int = 100
    delivery_timeout_seconds: float = 5.0
    # One produce or metadata request may take the whole publish budget, no
    # more: a stalled connection is given up and retried on a fresh one.
    request_timeout_ms: int = 5_000
    # Partition leadership and topic changes are noticed within 30 s even
    # when no error forces a refresh (aiokafka's default is 5 minutes).
    metadata_max_age_ms: int = 30_000
    client_id: str = "chat-service"

    def __post_init__(self) -> None:
        if not self.brokers:
            raise ValueError("KafkaSettings needs at least one broker")
        if self.partitions < 1:
            raise ValueError("partitions must be at least 1")
        if self.replication_factor is not None and self.replication_factor < 1:
            raise ValueError("replication_factor must be at least 1")
        if self.min_insync_replicas < 1:
            raise ValueError("min_insync_replicas must be at least 1")
        if (
            self.replication_factor is not None
            and self.min_insync_replicas > self.replication_factor
        ):
            raise ValueError("min_insync_replicas must not exceed replication_factor")
        if self.delivery_timeout_seconds <= 0:
            raise ValueError("delivery_timeout_seconds must be positive")

    @property
    def topic(self) -> str:
        return events_topic(self.topic_prefix)

    @property
    def bootstrap_servers(self) -> list[str]:
        return [broker.strip() for broker in self.brokers if broker.strip()]

    def producer_options(self) -> dict[str, Any]:
        """AIOKafkaProducer's keyword arguments. An outbox row counts as
        published once the broker acknowledged it, so the acknowledgement
        must mean every in-sync replica has the record (acks="all"), of
        which the topic demands at least min_insync_replicas, and retries
        must neither duplicate nor reorder it (idempotence)."""
        return {
            "bootstrap_servers": self.bootstrap_servers,
            "client_id": self.client_id,
            "acks": "all",
            "enable_idempotence": True,
            "linger_ms": self.linger_ms,
            "request_timeout_ms": self.request_timeout_ms,
            "metadata_max_age_ms": self.metadata_max_age_ms,
        }

"""Kafka: the production event publisher (outbox relay -> aiokafka producer)."""

from adapters.kafka.publisher import KafkaPublisher, PublishFailed
from adapters.kafka.settings import KafkaSettings

__all__ = ["KafkaPublisher", "KafkaSettings", "PublishFailed"]

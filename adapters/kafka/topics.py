"""Creating the events topic when it does not exist yet."""

from __future__ import annotations

import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]
from aiokafka.errors import TopicAlreadyExistsError, for_code  # type: ignore[import-untyped]

from adapters.kafka.settings import KafkaSettings

log = logging.getLogger(__name__)

_MAX_REPLICATION = 3


async def ensure_topic(settings: KafkaSettings) -> bool:
    """Creates `settings.topic` unless it exists; returns whether it was
    created. Another process creating it at the same moment is no error.
    Raises whatever the admin client raises when the cluster is out of reach
    (the caller bounds the time)."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.bootstrap_servers,
        client_id=f"{settings.client_id}-admin",
        request_timeout_ms=settings.request_timeout_ms,
    )
    try:
        await admin.start()
        if settings.topic in await admin.list_topics():
            return False
        replication = settings.replication_factor or await _default_replication(admin)
        response = await admin.create_topics(
            [NewTopic(settings.topic, settings.partitions, replication)],
            timeout_ms=settings.request_timeout_ms,
        )
        # CreateTopics reports per topic instead of raising.
        for _topic, code, message in response.topic_errors:
            if code == 0:
                continue
            error = for_code(code)
            if error is TopicAlreadyExistsError:
                return False
            raise error(message)
        log.info(
            "created Kafka topic %s (%d partitions, replication %d)",
            settings.topic,
            settings.partitions,
            replication,
        )
        return True
    finally:
        await admin.close()


async def _default_replication(admin: AIOKafkaAdminClient) -> int:
    # acks=all is only as durable as the replicas behind it: three where the
    # cluster has them, one on a single-broker development cluster.
    cluster = await admin.describe_cluster()
    return max(1, min(_MAX_REPLICATION, len(cluster["brokers"])))

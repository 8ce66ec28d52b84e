"""Creating the events topic when it does not exist yet, durable enough for
acks=all to mean what it says.

acks=all waits for the partition's in-sync replicas, and a partition whose
followers fell behind has only its leader in sync: without the topic's
`min.insync.replicas` above 1, an acknowledged record can live on one
broker, and be lost with it. The topic is therefore created with
`min.insync.replicas` (settings.min_insync_replicas, capped at the
replication factor: above it no write could ever succeed). A topic that
exists is left as it is (its operators own it); a warning says when it is
less durable than the settings ask.
"""

from __future__ import annotations

import logging
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]
from aiokafka.admin.config_resource import (  # type: ignore[import-untyped]
    ConfigResource,
    ConfigResourceType,
)
from aiokafka.errors import TopicAlreadyExistsError, for_code  # type: ignore[import-untyped]

from adapters.kafka.settings import KafkaSettings

log = logging.getLogger(__name__)

_MAX_REPLICATION = 3
MIN_INSYNC_REPLICAS = "min.insync.replicas"


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
            await _warn_if_less_durable(admin, settings)
            return False
        replication = settings.replication_factor or await _default_replication(admin)
        min_insync = min(settings.min_insync_replicas, replication)
        if min_insync < settings.min_insync_replicas:
            log.warning(
                "Kafka topic %s: min.insync.replicas %d capped at its replication factor %d; "
                "an acknowledged event may then live on a single broker",
                settings.topic,
                settings.min_insync_replicas,
                replication,
            )
        topic = NewTopic(
            settings.topic,
            settings.partitions,
            replication,
            topic_configs={MIN_INSYNC_REPLICAS: str(min_insync)},
        )
        response = await admin.create_topics([topic], timeout_ms=settings.request_timeout_ms)
        # CreateTopics reports per topic instead of raising.
        for _topic, code, message in response.topic_errors:
            if code == 0:
                continue
            error = for_code(code)
            if error is TopicAlreadyExistsError:
                return False
            raise error(message)
        log.info(
            "created Kafka topic %s (%d partitions, replication %d, min.insync.replicas %d)",
            settings.topic,
            settings.partitions,
            replication,
            min_insync,
        )
        return True
    finally:
        await admin.close()


async def topic_min_insync_replicas(admin: AIOKafkaAdminClient, topic: str) -> int | None:
    """The topic's min.insync.replicas, as the broker reports it (None: not reported)."""
    resource = ConfigResource(ConfigResourceType.TOPIC, topic, {MIN_INSYNC_REPLICAS: None})
    for response in await admin.describe_configs([resource]):
        for resource_answer in response.resources:
            entries: list[Any] = resource_answer[4]
            for entry in entries:
                if entry[0] == MIN_INSYNC_REPLICAS and entry[1] is not None:
                    return int(entry[1])
    return None


async def _warn_if_less_durable(admin: AIOKafkaAdminClient, settings: KafkaSettings) -> None:
    # Only a warning: a durability check must never stop events flowing.
    try:
        min_insync = await topic_min_insync_replicas(admin, settings.topic)
    except Exception as error:
        log.info("could not read the settings of Kafka topic %s: %r", settings.topic, error)
        return
    if min_insync is not None and min_insync < settings.min_insync_replicas:
        log.warning(
            "Kafka topic %s exists with min.insync.replicas %d, below the %d asked for "
            "(KAFKA_MIN_INSYNC_REPLICAS): an acknowledged event may live on fewer brokers",
            settings.topic,
            min_insync,
            settings.min_insync_replicas,
        )


async def _default_replication(admin: AIOKafkaAdminClient) -> int:
    # acks=all is only as durable as the replicas behind it: three where the
    # cluster has them, one on a single-broker development cluster.
    cluster = await admin.describe_cluster()
    return max(1, min(_MAX_REPLICATION, len(cluster["brokers"])))

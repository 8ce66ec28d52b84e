"""The embedded default's event publisher: one log line per event.

Stands in for Kafka when KAFKA_BROKERS is unset, so that the outbox is still
drained and every event is visible (logger `chat_service.events`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

from chat_service.domain.events import OutboxEntry
from chat_service.domain.serialization import event_to_dict

log = logging.getLogger("chat_service.events")


class LogPublisher:
    async def publish(self, entries: Sequence[OutboxEntry]) -> None:
        if not log.isEnabledFor(logging.INFO):
            return
        for entry in entries:
            log.info("event %s", json.dumps(event_to_dict(entry.event), separators=(",", ":")))

    async def close(self) -> None:
        return None

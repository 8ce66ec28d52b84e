"""The embedded default's event publisher: one log line per event.

Stands in for Kafka when KAFKA_BROKERS is unset, so that the outbox is still
drained and every event is visible (logger `chat_service.events`): at INFO
what happened where (ids, type, position), never the end user's id or
words; the whole event at DEBUG.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

from chat_service.domain.event_codec import event_to_dict
from chat_service.domain.events import OutboxEntry

log = logging.getLogger("chat_service.events")


class LogPublisher:
    async def publish(self, entries: Sequence[OutboxEntry]) -> None:
        if log.isEnabledFor(logging.DEBUG):
            for entry in entries:
                log.debug("event %s", json.dumps(event_to_dict(entry.event), separators=(",", ":")))
        elif log.isEnabledFor(logging.INFO):
            for entry in entries:
                event = entry.event
                log.info(
                    "event %s %s tenant=%s conversation=%s message=%s position=%d",
                    event.event_type.value,
                    event.event_id,
                    event.tenant_id,
                    event.conversation_id,
                    event.message_id or "-",
                    entry.position,
                )

    async def close(self) -> None:
        return None

"""The outbox relay: publishes stored events, oldest first, at least once.

Events are written to the outbox in the same write as the change they
describe; this loop leases a batch, hands it to the publisher, and marks it
published only after the publisher returned (for Kafka: after the broker
acknowledged every record). If publishing fails, the batch stays in the
outbox and is retried with backoff, so nothing is lost while the broker is
down. Leases let several relays (several processes) share one outbox
without publishing the same event twice in normal operation.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass

from chat_service.pipeline.batch_loop import BatchLoop
from chat_service.ports import ConversationStore, EventPublisher, StoreUnavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RelaySettings:
    batch_size: int = 100
    lease_seconds: float = 30.0
    idle_poll_seconds: float = 1.0
    max_backoff_seconds: float = 5.0  # how late, at worst, events leave once Kafka is back


class OutboxRelay:
    def __init__(
        self,
        store: ConversationStore,
        publisher: EventPublisher,
        settings: RelaySettings = RelaySettings(),
        *,
        owner: str | None = None,
    ) -> None:
        self._store = store
        self._publisher = publisher
        self._settings = settings
        self.owner = owner or f"relay-{uuid.uuid4()}"
        self._wake = asyncio.Event()
        self.published = 0

    def wake(self) -> None:
        """Something was written: look at the outbox now rather than at the next poll."""
        self._wake.set()

    async def run(self) -> None:
        await BatchLoop(
            step=self.publish_once,
            wake=self._wake,
            batch_size=self._settings.batch_size,
            idle_seconds=self._settings.idle_poll_seconds,
            max_backoff=self._settings.max_backoff_seconds,
            log=log,
            name="outbox relay",
            first_backoff=0.2,
            quiet_errors=(StoreUnavailable,),
        ).run()

    async def publish_once(self) -> int:
        """Publish one batch; returns how many events went out."""
        entries = await self._store.claim_outbox(
            self.owner, limit=self._settings.batch_size, lease_seconds=self._settings.lease_seconds
        )
        if not entries:
            return 0
        await self._publisher.publish(entries)
        await self._store.mark_published(self.owner, [entry.position for entry in entries])
        self.published += len(entries)
        return len(entries)

    async def drain(self, timeout: float) -> None:
        """Publish what is in the outbox now, for a clean shutdown; whatever is
        left stays in the outbox for the next start."""
        try:
            async with asyncio.timeout(timeout):
                while await self.publish_once() == self._settings.batch_size:
                    pass
        except Exception as exc:
            log.warning("outbox relay: stopped with events left in the outbox (%s)", exc)

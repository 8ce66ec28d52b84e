"""The outbox relay: publishes stored events, oldest first, at least once.

Events are written to the outbox in the same write as the change they
describe; this loop leases a batch, hands it to the publisher, and marks it
published only after the publisher returned (for Kafka: after the broker
acknowledged every record). If publishing fails, the batch stays in the
outbox and is retried with backoff, so nothing is lost while the broker is
down. Leases let several relays (several processes) share one outbox
without publishing the same event twice in normal operation.

Owner ids. A relay's leases are held under its owner id, and a claim by the
same owner takes its own leased rows straight back. So a process slot that
keeps its id across restarts (bootstrap derives `<host>:<port>`) resumes
publishing at once after a crash, instead of every tenant's events waiting
for the dead process's lease to run out; another slot still waits, since
the lease's holder may be alive. Two live relays must never share an id:
both would publish the same rows (duplicates; each one's events still
leave in order).

Retention. The outbox is also the event log that watches resume from, so
published rows are kept for a while, then pruned from the head in batches
(`prune_once`, every `prune_interval_seconds`): those published more than
`retention` ago, and those beyond the newest `retention_max_rows`. A watch
resuming from before what was pruned gets FAILED_PRECONDITION.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from chat_service.pipeline.batch_loop import drain_with_retention
from chat_service.ports import (
    Clock,
    ConversationStore,
    EventPublisher,
    Metrics,
    NoMetrics,
    StoreUnavailable,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RelaySettings:
    batch_size: int = 100
    lease_seconds: float = 30.0
    idle_poll_seconds: float = 1.0
    max_backoff_seconds: float = 5.0  # how late, at worst, events leave once Kafka is back
    retention: timedelta = timedelta(hours=168)
    retention_max_rows: int = 1_000_000
    prune_interval_seconds: float = 60.0
    prune_batch_size: int = 1_000


class OutboxRelay:
    def __init__(
        self,
        store: ConversationStore,
        publisher: EventPublisher,
        settings: RelaySettings = RelaySettings(),
        *,
        owner: str | None = None,
        clock: Clock | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._publisher = publisher
        self._settings = settings
        self.owner = owner or f"relay-{uuid.uuid4()}"
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self.published = 0
        # The lag costs a read of the newest position per batch: only when
        # it is recorded.
        self._metrics = None if metrics is None or isinstance(metrics, NoMetrics) else metrics

    def wake(self) -> None:
        """Something was written: look at the outbox now rather than at the next poll."""
        self._wake.set()

    def stop(self) -> None:
        """Before cancelling run(): its loops end even if a cancellation is lost."""
        self._stop.set()
        self._wake.set()

    async def run(self) -> None:
        """Publishes, and prunes what retention lets go, until cancelled."""
        await drain_with_retention(
            name="outbox relay",
            step=self.publish_once,
            prune=self.prune_once,
            wake=self._wake,
            stop=self._stop,
            timings=self._settings,
            log=log,
            quiet_errors=(StoreUnavailable,),
        )

    async def prune_once(self) -> int:
        """Prune one batch of published rows past retention; returns how many."""
        settings = self._settings
        return await self._store.prune_outbox(
            published_before=(self._clock.now() if self._clock else datetime.now(UTC))
            - settings.retention,
            keep_last=settings.retention_max_rows,
            limit=settings.prune_batch_size,
        )

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
        if self._metrics is not None:
            await self._record_lag(entries[-1].position)
        return len(entries)

    async def _record_lag(self, published_through: int) -> None:
        # Written since this claim, or held by other relays: still to go. The
        # batch is published either way: a store that cannot say leaves the
        # gauge as it was rather than failing the relay's pass.
        assert self._metrics is not None
        try:
            newest = await self._store.last_event_position()
        except StoreUnavailable:
            return
        self._metrics.outbox_lag(max(0, newest - published_through))

    async def drain(self, timeout: float) -> None:
        """Publish what is in the outbox now, for a clean shutdown; whatever is
        left stays in the outbox for the next start."""
        try:
            async with asyncio.timeout(timeout):
                while await self.publish_once() == self._settings.batch_size:
                    pass
        except Exception as exc:
            log.warning("outbox relay: stopped with events left in the outbox (%s)", exc)

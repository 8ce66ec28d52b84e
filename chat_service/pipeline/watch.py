"""WatchConversations: a tenant's conversation events, live and resumable.

The outbox is the event log: every event has a position, committed in
increasing order, and stays readable after it is published. One EventTail
per process follows the log's end and hands new entries to the watchers of
their tenant; a watcher that resumes first reads what it missed from the
store. So a watch misses nothing and repeats nothing across reconnects, and
it sees events written by any process sharing the store.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass

from chat_service.domain.enums import Channel, ConversationStatus
from chat_service.domain.errors import ResourceExhausted
from chat_service.domain.events import OutboxEntry
from chat_service.pipeline.errors import port_errors
from chat_service.ports import ConversationStore

log = logging.getLogger(__name__)

EntryListener = Callable[[OutboxEntry], None]


@dataclass(frozen=True, slots=True)
class TailSettings:
    batch_size: int = 500
    # The tail is woken on every local commit; the poll catches commits of
    # other processes sharing the store.
    poll_seconds: float = 0.5
    max_backoff_seconds: float = 10.0


class EventTail:
    def __init__(self, store: ConversationStore, settings: TailSettings = TailSettings()) -> None:
        self._store = store
        self._settings = settings
        self._listeners: dict[str, list[EntryListener]] = {}
        self._wake = asyncio.Event()
        self.position = 0  # everything up to here was handed out

    async def start_position(self) -> None:
        """Begin at the log's current end (watchers resume from the store)."""
        with port_errors():
            self.position = await self._store.last_event_position()

    def wake(self) -> None:
        self._wake.set()

    def subscribe(self, tenant_id: str, listener: EntryListener) -> Callable[[], None]:
        self._listeners.setdefault(tenant_id, []).append(listener)

        def unsubscribe() -> None:
            listeners = self._listeners.get(tenant_id)
            if listeners and listener in listeners:
                listeners.remove(listener)
                if not listeners:
                    del self._listeners[tenant_id]

        return unsubscribe

    async def run(self) -> None:
        failures = 0
        while True:
            self._wake.clear()
            try:
                count = await self.follow_once()
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                delay = min(self._settings.max_backoff_seconds, 0.1 * 2**failures)
                log.warning("event tail: %s; retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                continue
            if count < self._settings.batch_size:
                try:
                    async with asyncio.timeout(self._settings.poll_seconds):
                        await self._wake.wait()
                except TimeoutError:
                    pass

    async def follow_once(self) -> int:
        """Hand out one batch of new entries; returns how many there were."""
        entries = await self._store.read_events(
            after_position=self.position, limit=self._settings.batch_size
        )
        for entry in entries:
            self.position = entry.position
            for listener in tuple(self._listeners.get(entry.event.tenant_id, ())):
                try:
                    listener(entry)
                except Exception:
                    log.exception("event tail listener failed")
        return len(entries)


class WatchConversations:
    def __init__(self, store: ConversationStore, tail: EventTail, *, buffer_size: int) -> None:
        self._store = store
        self._tail = tail
        self._buffer_size = buffer_size

    def open(
        self,
        tenant_id: str,
        *,
        channels: Collection[Channel] = (),
        statuses: Collection[ConversationStatus] = (),
        resume_after: int | None = None,
    ) -> Watch:
        """A watch of the tenant's events after `resume_after` (None: from now
        on). It listens from this call on; close it when done."""
        return Watch(
            self._store,
            self._tail,
            tenant_id,
            buffer_size=self._buffer_size,
            channels=frozenset(channels),
            statuses=frozenset(statuses),
            resume_after=resume_after,
        )


class Watch:
    def __init__(
        self,
        store: ConversationStore,
        tail: EventTail,
        tenant_id: str,
        *,
        buffer_size: int,
        channels: frozenset[Channel],
        statuses: frozenset[ConversationStatus],
        resume_after: int | None,
    ) -> None:
        self._store = store
        self._tenant_id = tenant_id
        self._channels = channels
        self._statuses = statuses
        self._queue: asyncio.Queue[OutboxEntry] = asyncio.Queue(buffer_size)
        self._overflowed = False
        # Listen first, then catch up: whatever commits meanwhile is either
        # read from the store or queued, and duplicates are dropped by position.
        self._unsubscribe = tail.subscribe(tenant_id, self._on_entry)
        self._resume_after = resume_after
        self._last = tail.position if resume_after is None else resume_after

    def close(self) -> None:
        self._unsubscribe()

    async def entries(self) -> AsyncIterator[OutboxEntry]:
        if self._resume_after is not None:
            while True:
                with port_errors():
                    batch = await self._store.read_events(
                        after_position=self._last, limit=_CATCH_UP_BATCH, tenant_id=self._tenant_id
                    )
                for entry in batch:
                    self._last = entry.position
                    if self._wanted(entry):
                        yield entry
                if len(batch) < _CATCH_UP_BATCH:
                    break
        while True:
            if self._overflowed:
                raise ResourceExhausted(
                    "the watcher reads too slowly; resume with the last resume_token",
                    reason="WATCH_BUFFER_FULL",
                )
            entry = await self._queue.get()
            if entry.position <= self._last:
                continue
            self._last = entry.position
            if self._wanted(entry):
                yield entry

    def _on_entry(self, entry: OutboxEntry) -> None:
        try:
            self._queue.put_nowait(entry)
        except asyncio.QueueFull:
            self._overflowed = True

    def _wanted(self, entry: OutboxEntry) -> bool:
        event = entry.event
        return (not self._channels or event.channel in self._channels) and (
            not self._statuses or event.conversation_status in self._statuses
        )


_CATCH_UP_BATCH = 500

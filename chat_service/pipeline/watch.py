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
from chat_service.domain.errors import FailedPrecondition
from chat_service.domain.events import OutboxEntry
from chat_service.pipeline.batch_loop import BatchLoop
from chat_service.pipeline.errors import port_errors
from chat_service.ports import ConversationStore, StoreUnavailable

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
        await BatchLoop(
            step=self.follow_once,
            wake=self._wake,
            batch_size=self._settings.batch_size,
            idle_seconds=self._settings.poll_seconds,
            max_backoff=self._settings.max_backoff_seconds,
            log=log,
            name="event tail",
            quiet_errors=(StoreUnavailable,),
        ).run()

    async def follow_once(self) -> int:
        """Hand out one batch of new entries; returns how many there were."""
        if not self._listeners:
            # Nobody watches: just keep up with the end of the log (one
            # small query) rather than reading every event.
            self.position = max(self.position, await self._store.last_event_position())
            return 0
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

    async def check_resume(self, position: int) -> None:
        """A resume token past the end of the log was not issued by this
        store's log (it was replaced, or the token is forged)."""
        with port_errors():
            last = await self._store.last_event_position()
        if position > last:
            raise FailedPrecondition(
                "the resume token is ahead of the event log; start a new watch without it",
                reason="RESUME_TOKEN_INVALID",
            )

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
    """Live entries come through a bounded queue. A watcher that falls behind
    loses nothing: when the queue overflows, the watch drops it and reads on
    from the store (the log) at the watcher's own pace, then goes live again."""

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
        # Listen first, then catch up: whatever commits meanwhile is either
        # read from the store or queued, and duplicates are dropped by position.
        self._unsubscribe = tail.subscribe(tenant_id, self._on_entry)
        self._behind = resume_after is not None  # read from the store first
        self._last = tail.position if resume_after is None else resume_after

    def close(self) -> None:
        self._unsubscribe()

    async def entries(self) -> AsyncIterator[OutboxEntry]:
        while True:
            if self._behind:
                self._behind = False
                async for entry in self._catch_up():
                    yield entry
                continue
            entry = await self._queue.get()
            if entry.position <= self._last:
                continue
            self._last = entry.position
            yield entry

    async def _catch_up(self) -> AsyncIterator[OutboxEntry]:
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
                return

    def _on_entry(self, entry: OutboxEntry) -> None:
        if self._behind or not self._wanted(entry):
            return
        try:
            self._queue.put_nowait(entry)
        except asyncio.QueueFull:
            # Too far behind to follow live: drop the queue, read the log.
            self._behind = True
            while not self._queue.empty():
                self._queue.get_nowait()

    def _wanted(self, entry: OutboxEntry) -> bool:
        event = entry.event
        return (not self._channels or event.channel in self._channels) and (
            not self._statuses or event.conversation_status in self._statuses
        )


_CATCH_UP_BATCH = 500

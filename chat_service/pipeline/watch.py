"""WatchConversations: a tenant's conversation events, live and resumable.

The outbox is the event log: every event has a position, committed in
increasing order, and stays readable after it is published. One EventTail
per process follows the log's end and hands new entries to the watchers of
their tenant; a watcher that resumes first reads what it missed from the
store. So a watch misses nothing and repeats nothing across reconnects, and
it sees events written by any process sharing the store.

A watch never ends by itself: only with an error (the server drains, its
token expires, the store fails), after which the client resumes from the
watch's position (the gRPC layer puts its resume token in the error). A
tenant holds at most `max_per_tenant` watches in a process.

If the tail stalls for longer than the outbox retention, the events pruned
meanwhile cannot be handed out: the live watches behind them end with
FAILED_PRECONDITION RESUME_TOKEN_EXPIRED, as a resume from that far back
would, so that their clients start new watches rather than miss events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass

from chat_service.domain.enums import Channel, ConversationStatus
from chat_service.domain.errors import RESUME_TOKEN_EXPIRED, ChatError, FailedPrecondition
from chat_service.domain.events import EventType, OutboxEntry
from chat_service.pipeline.batch_loop import BatchLoop
from chat_service.pipeline.errors import port_errors
from chat_service.pipeline.page_tokens import PageTokens
from chat_service.pipeline.stream_limits import TenantSlots, on_expiry, token_expired
from chat_service.ports import ConversationStore, EventsPruned, StoreUnavailable

log = logging.getLogger(__name__)

EntryListener = Callable[[OutboxEntry], None]
# Told the position through which events were pruned before the tail read them.
PrunedListener = Callable[[int], None]


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
        self._pruned_listeners: list[PrunedListener] = []
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self.position = 0  # everything up to here was handed out

    async def start_position(self) -> None:
        """Begin at the log's current end (watchers resume from the store)."""
        with port_errors():
            self.position = await self._store.last_event_position()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        """Before cancelling run(): its loop ends even if a cancellation is lost."""
        self._stop.set()
        self._wake.set()

    def subscribe(
        self, tenant_id: str, listener: EntryListener, pruned: PrunedListener | None = None
    ) -> Callable[[], None]:
        """`listener` gets the tenant's new entries; `pruned`, if given, hears
        of every stretch of the log (any tenant's) that the tail skipped."""
        self._listeners.setdefault(tenant_id, []).append(listener)
        if pruned is not None:
            self._pruned_listeners.append(pruned)

        def unsubscribe() -> None:
            listeners = self._listeners.get(tenant_id)
            if listeners and listener in listeners:
                listeners.remove(listener)
                if not listeners:
                    del self._listeners[tenant_id]
            if pruned is not None and pruned in self._pruned_listeners:
                self._pruned_listeners.remove(pruned)

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
            stop=self._stop,
        ).run()

    async def follow_once(self) -> int:
        """Hand out one batch of new entries; returns how many there were."""
        if not self._listeners:
            # Nobody watches: just keep up with the end of the log (one
            # small query) rather than reading every event.
            end = await self._store.last_event_position()
            # Only if nobody subscribed while the query ran: the end may have
            # been read after a watch started listening (from this position)
            # and after its events were committed; skipping to it would lose
            # them, for a live watch for good (a resumed one only if its
            # catch-up read came first). Such a pass reads on from here.
            if not self._listeners:
                self.position = max(self.position, end)
            return 0
        try:
            entries = await self._store.read_events(
                after_position=self.position, limit=self._settings.batch_size
            )
        except EventsPruned as pruned:
            # Behind the outbox retention (stalled for longer than it keeps
            # events): go on from what is left rather than fail for ever, and
            # tell the watches that would miss what is gone.
            log.error("event tail: %s; live watches behind them end", pruned)
            self.position = pruned.pruned_through
            for told in tuple(self._pruned_listeners):
                told(pruned.pruned_through)
            return self._settings.batch_size  # (read on at once)
        for entry in entries:
            self.position = entry.position
            for listener in tuple(self._listeners.get(entry.event.tenant_id, ())):
                try:
                    listener(entry)
                except Exception:
                    log.exception("event tail listener failed")
        return len(entries)


class WatchConversations:
    """Opens watches, caps them per tenant, and ends them all when the server
    drains."""

    def __init__(
        self,
        store: ConversationStore,
        tail: EventTail,
        *,
        buffer_size: int,
        max_per_tenant: int = 100,
        stall_grace: float = 5.0,
        tokens: PageTokens | None = None,
    ) -> None:
        self._store = store
        self._tail = tail
        self._buffer_size = buffer_size
        # Signs and checks resume tokens (the deployment's key in production).
        self.tokens = tokens or PageTokens.ephemeral()
        self._stall_grace = stall_grace
        self._slots = TenantSlots(max_per_tenant, kind="watches", reason="TOO_MANY_WATCHES")
        self._open: set[Watch] = set()
        self._draining: Callable[[], ChatError] | None = None

    @property
    def open_count(self) -> int:
        return len(self._open)

    async def start_after(self, tenant_id: str, resume_token: str) -> int:
        """Where a watch starts: after the token's position, checked, or
        (no token) after the log's end now. Not after what the tail has
        handed out: the tail trails the log by its wake-up delay, and a watch
        "from now on" must not get events committed before it was opened."""
        if resume_token:
            position = self.tokens.resume_position(tenant_id, resume_token)
            await self.check_resume(position)
            return position
        with port_errors():
            return await self._store.last_event_position()

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
        event_types: Collection[EventType] = (),
        resume_after: int | None = None,
        valid_until: float | None = None,
        abandon: Callable[[], object] = lambda: None,
    ) -> Watch:
        """A watch of the tenant's events after `resume_after` (None: from now
        on). It listens from this call on; close it when done. It ends with
        UNAUTHENTICATED once the wall clock passes `valid_until` (the token's
        expiry); `abandon` ends the call without a status, for a client that
        stops reading after the watch failed."""
        release = self._slots.take(tenant_id)

        def closed(watch: Watch) -> None:
            release()
            self._open.discard(watch)

        try:
            watch = Watch(
                self._store,
                self._tail,
                tenant_id,
                buffer_size=self._buffer_size,
                channels=frozenset(channels),
                statuses=frozenset(statuses),
                event_types=frozenset(event_types),
                resume_after=resume_after,
                stall_grace=self._stall_grace,
                abandon=abandon,
                on_close=closed,
            )
        except BaseException:
            release()
            raise
        self._open.add(watch)
        watch.expire_at(valid_until)
        if self._draining is not None:
            watch.fail(self._draining())
        return watch

    def close_all(self, make_error: Callable[[], ChatError]) -> None:
        """End every open watch, and any opened from now on, with an error of
        `make_error` (each its own: it gets the watch's resume position)."""
        self._draining = make_error
        for watch in tuple(self._open):
            watch.fail(make_error())


class _Wake:
    """Queued to wake a waiting watcher: it has fallen behind, or failed."""


_WAKE = _Wake()


class Watch:
    """Live entries come through a bounded queue. A watcher that falls behind
    loses nothing: when the queue overflows, the watch drops it and reads on
    from the store (the log) at the watcher's own pace, then goes live again.

    A watch ends only with an error (`fail`): the consumer raises it at its
    next step; `position` is where a new watch resumes without a loss."""

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
        event_types: frozenset[EventType] = frozenset(),
        stall_grace: float = 5.0,
        abandon: Callable[[], object] = lambda: None,
        on_close: Callable[[Watch], object] = lambda _watch: None,
    ) -> None:
        self._store = store
        self._tenant_id = tenant_id
        self._channels = channels
        self._statuses = statuses
        self._event_types = event_types
        self._stall_grace = stall_grace
        self._abandon = abandon
        self._on_close = on_close
        self._queue: asyncio.Queue[OutboxEntry | _Wake] = asyncio.Queue(buffer_size)
        self._fatal: ChatError | None = None
        self._closed = False
        self._timers: list[asyncio.TimerHandle] = []
        # Listen first, then catch up: whatever commits meanwhile is either
        # read from the store or queued, and duplicates are dropped by position.
        self._unsubscribe: Callable[[], None] | None = tail.subscribe(
            tenant_id, self._on_entry, self._on_pruned
        )
        self._behind = resume_after is not None  # read from the store first
        self._catching_up = False  # reading from the store: it moves the position
        self._last = tail.position if resume_after is None else resume_after

    @property
    def position(self) -> int:
        """Every wanted entry up to here was handed to the consumer."""
        return self._last

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop_listening()
        for timer in self._timers:
            timer.cancel()
        self._on_close(self)

    def expire_at(self, valid_until: float | None) -> None:
        timer = on_expiry(valid_until, lambda: self.fail(token_expired()))
        if timer is not None:
            self._timers.append(timer)

    def fail(self, error: ChatError) -> None:
        """End the watch with `error`: at once if the consumer waits, else at
        its next step; abandon the call if it does not get there in time."""
        if self._fatal is not None or self._closed:
            return
        self._fatal = error
        self._stop_listening()
        self._wake()
        loop = asyncio.get_running_loop()
        self._timers.append(loop.call_later(self._stall_grace, self._abandon_if_stalled))

    def _abandon_if_stalled(self) -> None:
        if not self._closed:
            log.info("a watch of %s reads nothing after it failed; abandoning it", self._tenant_id)
            self._abandon()

    def _stop_listening(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def _wake(self) -> None:
        # A full queue means the consumer is not waiting: it checks first.
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(_WAKE)

    def _check(self) -> None:
        if self._fatal is not None:
            raise self._fatal

    async def entries(self) -> AsyncIterator[OutboxEntry]:
        while True:
            self._check()
            if self._behind:
                self._behind = False
                self._catching_up = True
                try:
                    async for entry in self._catch_up():
                        yield entry
                finally:
                    self._catching_up = False
                continue
            queued = await self._queue.get()
            if isinstance(queued, _Wake) or queued.position <= self._last:
                continue
            self._last = queued.position
            yield queued

    async def _catch_up(self) -> AsyncIterator[OutboxEntry]:
        while True:
            with port_errors():
                batch = await self._store.read_events(
                    after_position=self._last, limit=_CATCH_UP_BATCH, tenant_id=self._tenant_id
                )
            for entry in batch:
                self._check()
                self._last = entry.position
                if self._wanted(entry):
                    yield entry
            if len(batch) < _CATCH_UP_BATCH:
                return

    def _on_entry(self, entry: OutboxEntry) -> None:
        if self._behind:
            return
        if not self._wanted(entry):
            # Left out. With nothing queued (and no catch-up reading the
            # store from the position), every entry before it was taken:
            # entries() moves the position as it takes one. So the position
            # moves past it, or a rarely matching watch would resume far
            # behind the log's end, even past its retention.
            if not self._catching_up and self._queue.empty() and entry.position > self._last:
                self._last = entry.position
            return
        try:
            self._queue.put_nowait(entry)
        except asyncio.QueueFull:
            # Too far behind to follow live: drop the queue, read the log.
            # The consumer may be waiting on the queue: wake it to do so.
            self._behind = True
            while not self._queue.empty():
                self._queue.get_nowait()
            self._wake()

    def _on_pruned(self, through: int) -> None:
        # Behind, the watch reads the store itself from its own position
        # (which refuses a read that would miss events); live, it would skip
        # whatever of (position, through] was its tenant's: unknowable now.
        if self._behind or self._last >= through:
            return
        self.fail(
            FailedPrecondition(
                "this watch fell behind the event log's retention and may have missed events; "
                "start a new watch without a resume token",
                reason=RESUME_TOKEN_EXPIRED,
            )
        )

    def _wanted(self, entry: OutboxEntry) -> bool:
        event = entry.event
        return (
            (not self._channels or event.channel in self._channels)
            and (not self._statuses or event.conversation_status in self._statuses)
            and (not self._event_types or event.event_type in self._event_types)
        )


_CATCH_UP_BATCH = 500

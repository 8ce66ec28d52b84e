"""Wires the core: every use case, listener and background part, built from
the ports it is handed.

bootstrap.py chooses the adapters from the settings (`Parts`); `wire` builds
the same core around whatever it is given, so production and the unit tests
(tests/builders.py: fakes as the parts) run one wiring. Nothing here knows
an adapter.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta

from chat_service.auth import JwtVerifier
from chat_service.config import Settings
from chat_service.domain.enums import Channel, DeliveryStatus
from chat_service.domain.model import Message
from chat_service.pipeline.admission import TenantAdmission
from chat_service.pipeline.conversation_stream import StreamServices
from chat_service.pipeline.conversations import ConversationQueries, UpdateConversationStatus
from chat_service.pipeline.delivery import DeliveryPolicy, DeliveryQueue
from chat_service.pipeline.export import ExportConversation
from chat_service.pipeline.live import LiveFeed
from chat_service.pipeline.outbox_relay import OutboxRelay, RelaySettings
from chat_service.pipeline.page_tokens import PageTokens
from chat_service.pipeline.read_receipts import MarkRead
from chat_service.pipeline.send_message import SendMessage, SendSettings
from chat_service.pipeline.state_cache import StateCacheFeed
from chat_service.pipeline.stream_limits import server_draining
from chat_service.pipeline.stream_opener import ConversationStreams
from chat_service.pipeline.watch import EventTail, WatchConversations
from chat_service.pipeline.writer import ConversationWriter
from chat_service.ports import (
    ChannelSender,
    Clock,
    ConversationChange,
    ConversationLocks,
    ConversationStore,
    Engine,
    EventPublisher,
    IdempotencyGuard,
    LiveBus,
    RateLimiter,
    SessionCache,
)

log = logging.getLogger(__name__)

# Channels whose clients read the store (the web widget): storing a reply
# is delivering it.
DELIVERED_BY_STORING = (Channel.WEB,)


@dataclass
class Lifecycle:
    """What adapters need done when the service starts, and when it stops
    (closed in reverse order of creation)."""

    starters: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Coordination:
    locks: ConversationLocks
    idempotency: IdempotencyGuard
    limiter: RateLimiter
    bus: LiveBus
    sessions: SessionCache


@dataclass(frozen=True, slots=True)
class Parts:
    """An adapter for every port, and what the core is keyed with."""

    store: ConversationStore
    coordination: Coordination
    publisher: EventPublisher
    engine: Engine
    clock: Clock
    verifier: JwtVerifier
    tokens: PageTokens
    relay_owner: str  # see bootstrap.relay_owner
    # Platform connectors by channel (none in this version).
    senders: Mapping[Channel, ChannelSender] = field(default_factory=dict)
    # The cache the rest of the platform reads conversation state from, fed
    # on every commit; None where nobody could read it (a single process).
    state_cache: SessionCache | None = None
    lifecycle: Lifecycle = field(default_factory=Lifecycle)


@dataclass(frozen=True, slots=True)
class Tuning:
    """Timings that are no setting: production keeps these defaults, tests
    shorten them."""

    delivery: DeliveryPolicy = field(default_factory=DeliveryPolicy)
    typing_interval: float = 1.0
    subscribe_timeout: float = 2.0


@dataclass
class Services:
    """The built core and the background work it needs, with its shutdown."""

    settings: Settings
    store: ConversationStore
    verifier: JwtVerifier
    admission: TenantAdmission
    send_message: SendMessage
    queries: ConversationQueries
    update_status: UpdateConversationStatus
    streams: ConversationStreams
    watch: WatchConversations
    export: ExportConversation
    tail: EventTail
    delivery: DeliveryQueue
    relay: OutboxRelay
    publisher: EventPublisher
    engine: Engine
    lifecycle: Lifecycle = field(default_factory=Lifecycle)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(self) -> None:
        for start in self.lifecycle.starters:
            await start()
        await self.tail.start_position()
        self._tasks.append(asyncio.create_task(self.relay.run(), name="outbox relay"))
        self._tasks.append(asyncio.create_task(self.tail.run(), name="event tail"))

    def end_streams(self) -> None:
        """Ends every open stream and watch, and any opened from now on
        (UNAVAILABLE, SERVER_DRAINING, with the resume position): they never
        finish by themselves."""
        self.streams.close_all(server_draining)
        self.watch.close_all(server_draining)

    async def close(self, timeout: float = 5.0) -> None:
        """Finish deliveries, publish what is in the outbox, then close
        adapters; the steps share one `timeout`, so that shutdown ends in
        it (plus closing the adapters) however slow the store is."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout

        def left() -> float:
            return max(0.0, deadline - loop.time())

        # Messages whose callers left after the commit are still being
        # answered; their replies go to delivery, so they come first.
        await self.send_message.close(left())
        await self.delivery.close(left())
        self.relay.stop()
        self.tail.stop()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            # Bounded: a task that ignores its cancellation must not hold
            # the process (it dies with it).
            _, stuck = await asyncio.wait(self._tasks, timeout=max(left(), 1.0))
            for task in stuck:
                log.error("%s did not stop when cancelled", task.get_name())
        await self.relay.drain(left())
        for close in reversed(self.lifecycle.closers):
            try:
                await close()
            except Exception:
                log.exception("error while closing")


def wire(parts: Parts, settings: Settings, tuning: Tuning = Tuning()) -> Services:
    """The core around `parts`. Builds objects only: nothing runs until
    `Services.start`."""
    store, clock, coordination = parts.store, parts.clock, parts.coordination
    relay = OutboxRelay(
        store, parts.publisher, relay_settings(settings), owner=parts.relay_owner, clock=clock
    )
    tail = EventTail(store)
    live = LiveFeed(coordination.bus)
    listeners: list[Callable[[ConversationChange], None]] = [
        lambda _change: relay.wake(),
        lambda _change: tail.wake(),
        live.committed,
    ]
    if parts.state_cache is not None:
        states = StateCacheFeed(parts.state_cache)
        parts.lifecycle.closers.append(states.drain)
        listeners.append(states.committed)

    def delivery_changed(message: Message, status: DeliveryStatus) -> None:
        relay.wake()
        tail.wake()
        live.delivery_changed(message, status)

    writer = ConversationWriter(store, listeners)
    delivery = DeliveryQueue(
        store=store,
        senders=parts.senders,
        clock=clock,
        policy=tuning.delivery,
        listeners=[delivery_changed],
        delivered_by_storing=DELIVERED_BY_STORING,
    )
    admission = TenantAdmission(coordination.limiter)
    send_message = SendMessage(
        store=store,
        writer=writer,
        locks=coordination.locks,
        idempotency=coordination.idempotency,
        engine=parts.engine,
        delivery=delivery,
        sessions=coordination.sessions,
        clock=clock,
        settings=SendSettings(
            engine_timeout=settings.engine_timeout,
            lock_timeout=settings.lock_timeout,
            fallback_text=settings.fallback_text,
        ),
    )
    streams = ConversationStreams(
        StreamServices(
            store=store,
            writer=writer,
            bus=coordination.bus,
            send_message=send_message,
            mark_read=MarkRead(store=store, clock=clock, on_change=delivery_changed),
            admission=admission,
            clock=clock,
            buffer_size=settings.stream_buffer_size,
            stall_grace=settings.stream_stall_grace_seconds,
            subscribe_timeout=tuning.subscribe_timeout,
            max_per_tenant=settings.max_streams_per_tenant,
            first_frame_timeout=settings.stream_first_frame_timeout_seconds,
            typing_interval=tuning.typing_interval,
        )
    )
    return Services(
        settings=settings,
        store=store,
        verifier=parts.verifier,
        admission=admission,
        send_message=send_message,
        queries=ConversationQueries(store, tokens=parts.tokens),
        update_status=UpdateConversationStatus(
            store=store,
            writer=writer,
            locks=coordination.locks,
            clock=clock,
            lock_timeout=settings.lock_timeout,
        ),
        streams=streams,
        watch=WatchConversations(
            store,
            tail,
            buffer_size=settings.stream_buffer_size,
            max_per_tenant=settings.max_watches_per_tenant,
            stall_grace=settings.stream_stall_grace_seconds,
            tokens=parts.tokens,
        ),
        export=ExportConversation(store),
        tail=tail,
        delivery=delivery,
        relay=relay,
        publisher=parts.publisher,
        engine=parts.engine,
        lifecycle=parts.lifecycle,
    )


def relay_settings(settings: Settings) -> RelaySettings:
    return RelaySettings(
        batch_size=500 if settings.kafka_brokers else 100,
        retention=timedelta(hours=settings.outbox_retention_hours),
        retention_max_rows=settings.outbox_retention_max_rows,
        prune_interval_seconds=settings.outbox_prune_interval_seconds,
    )

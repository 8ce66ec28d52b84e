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
from dataclasses import dataclass, field, replace
from datetime import timedelta

from opentelemetry import trace

from chat_service.auth import Authenticator
from chat_service.config import Settings
from chat_service.domain.enums import Channel, DeliveryStatus
from chat_service.domain.model import Message
from chat_service.pipeline.admission import TenantAdmission
from chat_service.pipeline.canned_replies import CannedReplies
from chat_service.pipeline.connections import CachedConnections, ChannelConnections
from chat_service.pipeline.conversation_stream import StreamServices
from chat_service.pipeline.conversations import ConversationQueries, UpdateConversationStatus
from chat_service.pipeline.delivery import DeliveryPolicy, DeliveryQueue
from chat_service.pipeline.export import ExportConversation
from chat_service.pipeline.inbox_worker import InboxSettings, InboxWorker
from chat_service.pipeline.live import LiveFeed
from chat_service.pipeline.outbox_relay import OutboxRelay, RelaySettings
from chat_service.pipeline.page_tokens import PageTokens
from chat_service.pipeline.read_receipts import MarkRead
from chat_service.pipeline.retry_delivery import RetryDelivery
from chat_service.pipeline.send_message import SendMessage, SendSettings
from chat_service.pipeline.state_cache import StateCacheFeed
from chat_service.pipeline.stream_limits import server_draining
from chat_service.pipeline.stream_opener import ConversationStreams
from chat_service.pipeline.voice_calls import AnswerCall, CallSettings
from chat_service.pipeline.watch import EventTail, WatchConversations
from chat_service.pipeline.webhooks import HandleWebhook, VerifyWebhook
from chat_service.pipeline.writer import ConversationWriter, DelayedWake
from chat_service.ports import (
    ChannelSender,
    Clock,
    ConnectionDirectory,
    ConnectionStore,
    ConversationChange,
    ConversationLocks,
    ConversationStore,
    Engine,
    EventPublisher,
    InboundChannel,
    LiveBus,
    Metrics,
    NoMetrics,
    NoTracer,
    RateLimiter,
    SecretBox,
    SessionCache,
    Tracer,
    WebhookInbox,
)

log = logging.getLogger(__name__)

# Channels whose clients read the store (the web widget): storing a reply
# is delivering it. Voice replies are said in the webhook's own answer
# (pipeline/voice_calls.py), right after they are stored: SENT as well.
DELIVERED_BY_STORING = (Channel.WEB, Channel.VOICE)


@dataclass
class Lifecycle:
    """What adapters need done when the service starts, and when it stops
    (closed in reverse order of creation)."""

    starters: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Coordination:
    locks: ConversationLocks
    limiter: RateLimiter
    bus: LiveBus
    sessions: SessionCache


# Builds a channel's sender once the connection directory exists
# (adapters/channels/*_send.py make them; bootstrap.choose_parts picks them).
SenderFactory = Callable[[ConnectionDirectory, ConversationStore, Clock], ChannelSender]


@dataclass(frozen=True, slots=True)
class Parts:
    """An adapter for every port, and what the core is keyed with."""

    store: ConversationStore
    # Channel connections and the webhook inbox, kept by the same store.
    connections: ConnectionStore
    inbox: WebhookInbox
    coordination: Coordination
    publisher: EventPublisher
    engine: Engine
    clock: Clock
    verifier: Authenticator
    tokens: PageTokens
    relay_owner: str  # see bootstrap.relay_owner
    # Seals tenants' channel credentials (bootstrap.channel_secret_box).
    secret_box: SecretBox
    # Platform connectors by channel that need nothing from the core.
    senders: Mapping[Channel, ChannelSender] = field(default_factory=dict)
    # Platform connectors that need the connection directory (built in
    # `wire`): each is called once with it, the store and the clock.
    sender_factories: Mapping[Channel, SenderFactory] = field(default_factory=dict)
    # Platform webhooks by channel (HandleWebhook, VerifyWebhook, the inbox
    # worker); a platform missing here answers UNIMPLEMENTED.
    inbound: Mapping[Channel, InboundChannel] = field(default_factory=dict)
    # The cache the rest of the platform reads conversation state from, fed
    # on every commit; None where nobody could read it (a single process).
    state_cache: SessionCache | None = None
    lifecycle: Lifecycle = field(default_factory=Lifecycle)
    # What is counted and timed (METRICS_PORT); the engine comes measured.
    metrics: Metrics = field(default_factory=NoMetrics)
    # The pipeline's step spans (OTLP); the engine and the locks come traced.
    tracer: Tracer = field(default_factory=NoTracer)
    # The RPCs' server spans (grpc_api/tracing_interceptor.py); None: none.
    rpc_tracer: trace.Tracer | None = None


@dataclass(frozen=True, slots=True)
class Tuning:
    """Timings that are no setting: production keeps these defaults, tests
    shorten them."""

    delivery: DeliveryPolicy = field(default_factory=DeliveryPolicy)
    typing_interval: float = 1.0
    subscribe_timeout: float = 2.0
    # The webhook inbox worker's (its retention comes from the settings).
    inbox: InboxSettings = field(default_factory=InboxSettings)


@dataclass
class Services:
    """The built core and the background work it needs, with its shutdown."""

    settings: Settings
    store: ConversationStore
    verifier: Authenticator
    admission: TenantAdmission
    send_message: SendMessage
    queries: ConversationQueries
    update_status: UpdateConversationStatus
    streams: ConversationStreams
    watch: WatchConversations
    export: ExportConversation
    tail: EventTail
    delivery: DeliveryQueue
    retry_delivery: RetryDelivery
    # Channel connections: the admin use cases, and the cached directory of
    # opened connections the webhooks and senders read (its changes here
    # invalidate it at once).
    connections: ChannelConnections
    directory: CachedConnections
    # Platform webhooks: the edge (acknowledged once in the inbox) and the
    # worker that stores and answers what they carry.
    handle_webhook: HandleWebhook
    verify_webhook: VerifyWebhook
    inbox_worker: InboxWorker
    # Phone calls' webhooks, answered with the bot's words (HandleWebhook's
    # synchronous platforms).
    calls: AnswerCall
    relay: OutboxRelay
    publisher: EventPublisher
    engine: Engine
    lifecycle: Lifecycle = field(default_factory=Lifecycle)
    metrics: Metrics = field(default_factory=NoMetrics)  # the gRPC interceptor's too
    rpc_tracer: trace.Tracer | None = None  # the server spans' (Parts.rpc_tracer)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _inbox_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        for start in self.lifecycle.starters:
            await start()
        await self.tail.start_position()
        self._tasks.append(asyncio.create_task(self.relay.run(), name="outbox relay"))
        self._tasks.append(asyncio.create_task(self.tail.run(), name="event tail"))
        self._inbox_task = asyncio.create_task(self.inbox_worker.run(), name="webhook inbox")
        self._tasks.append(self._inbox_task)
        # Replies PENDING that no live process holds (a crash, or another
        # process that died, left them): queued in the background at start
        # and then every sweep, so that a long backlog does not hold the start
        # (delivery.close stops it).
        self._tasks.append(
            asyncio.create_task(self.delivery.run_sweeps(), name="delivery recovery")
        )

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

        # No webhook is taken from the inbox from here on: what is left there
        # (or claimed and unfinished) is handled after the next start.
        self.inbox_worker.stop()
        if self._inbox_task is not None:
            self._inbox_task.cancel()
        # Messages whose callers left after the commit are still being
        # answered; their replies go to delivery, so they come first.
        await self.send_message.close(left())
        # Calls' work that follows those messages (a call's end waiting for
        # its last turn, a late turn's replies recorded unsaid).
        await self.calls.wait_idle(left())
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
    directory = CachedConnections(
        store=parts.connections,
        box=parts.secret_box,
        clock=clock,
        ttl_seconds=settings.channel_cache_seconds,
    )
    connections = ChannelConnections(
        store=parts.connections,
        box=parts.secret_box,
        clock=clock,
        tokens=parts.tokens,
        invalidate=directory.invalidate,
    )
    relay = OutboxRelay(
        store,
        parts.publisher,
        relay_settings(settings),
        owner=parts.relay_owner,
        clock=clock,
        metrics=parts.metrics,
    )
    tail = EventTail(store)
    live = LiveFeed(coordination.bus)
    # Commits come in bursts under load: the relay and the tail read the
    # outbox once per burst, not once per commit.
    wake_relay, wake_tail = DelayedWake(relay.wake), DelayedWake(tail.wake)
    listeners: list[Callable[[ConversationChange], None]] = [
        wake_relay,
        wake_tail,
        live.committed,
        parts.metrics.committed,
    ]
    if parts.state_cache is not None:
        states = StateCacheFeed(parts.state_cache)
        parts.lifecycle.closers.append(states.drain)
        listeners.append(states.committed)

    def delivery_changed(message: Message, status: DeliveryStatus) -> None:
        wake_relay()
        wake_tail()
        live.delivery_changed(message, status)

    writer = ConversationWriter(store, listeners, tracer=parts.tracer)
    delivery = DeliveryQueue(
        store=store,
        senders={
            **parts.senders,
            **{
                channel: make(directory, store, clock)
                for channel, make in parts.sender_factories.items()
            },
        },
        clock=clock,
        policy=tuning.delivery,
        listeners=[delivery_changed],
        delivered_by_storing=DELIVERED_BY_STORING,
        # Unique among live processes, kept across a restart: a restarted
        # process takes its own delivery leases back at once.
        owner=parts.relay_owner,
        metrics=parts.metrics,
        tracer=parts.tracer,
    )
    admission = TenantAdmission(coordination.limiter, metrics=parts.metrics)
    # Answers what the service cannot read (webhooks' unsupported types)
    # without the engine; passes everything else to it.
    canned = CannedReplies(parts.engine)
    send_message = SendMessage(
        store=store,
        writer=writer,
        locks=coordination.locks,
        engine=canned,
        delivery=delivery,
        sessions=coordination.sessions,
        clock=clock,
        settings=SendSettings(
            engine_timeout=settings.engine_timeout,
            lock_timeout=settings.lock_timeout,
            fallback_text=settings.fallback_text,
        ),
        tracer=parts.tracer,
    )
    update_status = UpdateConversationStatus(
        store=store,
        writer=writer,
        locks=coordination.locks,
        clock=clock,
        lock_timeout=settings.lock_timeout,
    )
    # Phone calls: answered in the webhook's response, not through the inbox.
    calls = AnswerCall(
        send_message=send_message,
        update_status=update_status,
        store=store,
        locks=coordination.locks,
        settings=CallSettings(
            fallback_text=settings.fallback_text,
            lock_timeout=settings.lock_timeout,
            reply_timeout=settings.voice_reply_timeout_seconds,
            greeting=settings.voice_greeting,
        ),
        clock=clock,
    )
    inbox_worker = InboxWorker(
        inbox=parts.inbox,
        inbound=parts.inbound,
        directory=directory,
        store=store,
        send_message=send_message,
        canned=canned,
        clock=clock,
        owner=parts.relay_owner,
        listeners=[delivery_changed],
        settings=replace(tuning.inbox, retention=timedelta(hours=settings.inbox_retention_hours)),
        tracer=parts.tracer,
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
    watch = WatchConversations(
        store,
        tail,
        buffer_size=settings.stream_buffer_size,
        max_per_tenant=settings.max_watches_per_tenant,
        stall_grace=settings.stream_stall_grace_seconds,
        tokens=parts.tokens,
    )
    parts.metrics.gauge_open("streams", lambda: streams.open_count)
    parts.metrics.gauge_open("watches", lambda: watch.open_count)
    return Services(
        settings=settings,
        store=store,
        verifier=parts.verifier,
        admission=admission,
        send_message=send_message,
        queries=ConversationQueries(store, tokens=parts.tokens),
        update_status=update_status,
        streams=streams,
        watch=watch,
        export=ExportConversation(store),
        tail=tail,
        delivery=delivery,
        retry_delivery=RetryDelivery(store=store, delivery=delivery, clock=clock),
        connections=connections,
        directory=directory,
        handle_webhook=HandleWebhook(
            inbound=parts.inbound,
            directory=directory,
            inbox=parts.inbox,
            clock=clock,
            on_stored=inbox_worker.wake,
            calls=calls,
        ),
        verify_webhook=VerifyWebhook(inbound=parts.inbound, directory=directory),
        inbox_worker=inbox_worker,
        calls=calls,
        relay=relay,
        publisher=parts.publisher,
        engine=parts.engine,
        lifecycle=parts.lifecycle,
        metrics=parts.metrics,
        rpc_tracer=parts.rpc_tracer,
    )


def relay_settings(settings: Settings) -> RelaySettings:
    return RelaySettings(
        batch_size=500 if settings.kafka_brokers else 100,
        retention=timedelta(hours=settings.outbox_retention_hours),
        retention_max_rows=settings.outbox_retention_max_rows,
        prune_interval_seconds=settings.outbox_prune_interval_seconds,
    )

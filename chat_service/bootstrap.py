"""The composition root: picks an adapter for every port from the settings
and builds the use cases. The one module that knows every adapter.

Each production part is chosen by its variable alone: MONGODB_URI (store),
REDIS_URL (locks, idempotency claims, rate limits, live fan-out),
KAFKA_BROKERS (events), MCP_ENGINE_URL (bot engine); unset, the embedded
default stands in.

Nothing is built at import time; `build_services` is called by the server
(and by tests) with explicit settings.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta

from adapters.engine.builtin import BuiltinEngine
from adapters.engine.grpc_engine import GrpcEngine
from adapters.kafka import KafkaPublisher, KafkaSettings
from adapters.memory.clock import SystemClock
from adapters.memory.live_bus import InProcessLiveBus
from adapters.memory.locks import InProcessConversationLocks, InProcessIdempotencyGuard
from adapters.memory.log_publisher import LogPublisher
from adapters.memory.rate_limit import InProcessRateLimiter
from adapters.memory.session_cache import InProcessSessionCache
from adapters.mongo import MongoStore
from adapters.redis.breaker import CircuitBreaker
from adapters.redis.client import connect_redis
from adapters.redis.idempotency import RedisIdempotencyGuard
from adapters.redis.live_bus import RedisLiveBus
from adapters.redis.locks import RedisConversationLocks
from adapters.redis.rate_limit import RedisRateLimiter
from adapters.redis.session_cache import RedisSessionCache
from adapters.sqlite.store import SqliteStore
from chat_service.auth import JwtVerifier, load_or_create_dev_key
from chat_service.config import DEV_KEY_REFUSED, ConfigError, Settings
from chat_service.domain.enums import Channel, DeliveryStatus
from chat_service.domain.model import Message
from chat_service.key_files import load_or_create_page_token_key
from chat_service.pipeline.admission import TenantAdmission
from chat_service.pipeline.conversation_stream import ConversationStreams, StreamServices
from chat_service.pipeline.conversations import ConversationQueries, UpdateConversationStatus
from chat_service.pipeline.delivery import DeliveryQueue
from chat_service.pipeline.export import ExportConversation
from chat_service.pipeline.live import LiveFeed
from chat_service.pipeline.outbox_relay import OutboxRelay, RelaySettings
from chat_service.pipeline.page_tokens import PageTokens
from chat_service.pipeline.read_receipts import MarkRead
from chat_service.pipeline.send_message import SendMessage, SendSettings
from chat_service.pipeline.state_cache import StateCacheFeed
from chat_service.pipeline.stream_limits import server_draining
from chat_service.pipeline.watch import EventTail, WatchConversations
from chat_service.pipeline.writer import ConversationWriter
from chat_service.ports import (
    ChannelSender,
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
        adapters; each step bounded so that shutdown always ends."""
        # Messages whose callers left after the commit are still being
        # answered; their replies go to delivery, so they come first.
        await self.send_message.close(timeout)
        await self.delivery.close(timeout)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.relay.drain(timeout)
        for close in reversed(self.lifecycle.closers):
            try:
                await close()
            except Exception:
                log.exception("error while closing")


async def build_services(settings: Settings) -> Services:
    life = Lifecycle()
    try:
        return await _build(settings, life)
    except BaseException:
        # Whatever was opened before the failure (the store, a Redis pool).
        for close in reversed(life.closers):
            try:
                await close()
            except Exception:
                log.exception("error while closing after a failed start")
        raise


async def _build(settings: Settings, life: Lifecycle) -> Services:
    verifier = _verifier(settings)
    tokens = _page_tokens(settings)
    clock = SystemClock()
    store = await _store(settings, life)
    coordination = _coordination(settings, life)
    publisher = _publisher(settings, life)
    engine = _engine(settings, life)
    relay = OutboxRelay(
        store, publisher, relay_settings(settings), owner=relay_owner(settings), clock=clock
    )
    tail = EventTail(store)
    live = LiveFeed(coordination.bus)
    listeners: list[Callable[[ConversationChange], None]] = [
        lambda _change: relay.wake(),
        lambda _change: tail.wake(),
        live.committed,
    ]
    if settings.redis_url:
        # The state cache is for the rest of the platform, which can only
        # read a shared one: in one process nobody would.
        states = StateCacheFeed(coordination.sessions)
        life.closers.append(states.drain)
        listeners.append(states.committed)

    def delivery_changed(message: Message, status: DeliveryStatus) -> None:
        relay.wake()
        tail.wake()
        live.delivery_changed(message, status)

    writer = ConversationWriter(store, listeners)
    senders: dict[Channel, ChannelSender] = {}  # platform connectors: not in this version
    delivery = DeliveryQueue(
        store=store,
        senders=senders,
        clock=clock,
        listeners=[delivery_changed],
        delivered_by_storing=(Channel.WEB,),
    )
    admission = TenantAdmission(coordination.limiter)
    send_message = SendMessage(
        store=store,
        writer=writer,
        locks=coordination.locks,
        idempotency=coordination.idempotency,
        engine=engine,
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
            max_per_tenant=settings.max_streams_per_tenant,
            first_frame_timeout=settings.stream_first_frame_timeout_seconds,
        )
    )
    return Services(
        settings=settings,
        store=store,
        verifier=verifier,
        admission=admission,
        send_message=send_message,
        queries=ConversationQueries(store, tokens=tokens),
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
            tokens=tokens,
        ),
        export=ExportConversation(store),
        tail=tail,
        delivery=delivery,
        relay=relay,
        publisher=publisher,
        engine=engine,
        lifecycle=life,
    )


async def _store(settings: Settings, life: Lifecycle) -> ConversationStore:
    store: ConversationStore
    if settings.mongodb_uri:
        store = await MongoStore.open(
            settings.mongodb_uri,
            max_pool_size=settings.max_connections_mongo,
            timeout_ms=settings.request_timeout_ms,
        )
    else:
        store = await SqliteStore.open(
            settings.data_dir / "chat.sqlite3", synchronous=settings.sqlite_synchronous
        )
    life.closers.append(store.close)
    return store


def _coordination(settings: Settings, life: Lifecycle) -> Coordination:
    if not settings.redis_url:
        # One process: everything in memory (DESIGN.md's embedded default).
        return Coordination(
            locks=InProcessConversationLocks(),
            idempotency=InProcessIdempotencyGuard(),
            limiter=InProcessRateLimiter(settings.rate_limit_for),
            bus=InProcessLiveBus(),
            sessions=InProcessSessionCache(),
        )
    redis = connect_redis(settings.redis_url, max_connections=settings.max_connections_redis)
    life.closers.append(redis.aclose)
    bus = RedisLiveBus(redis)
    life.starters.append(bus.start)
    life.closers.append(bus.close)
    # One breaker for the one Redis: what one adapter learns, all use.
    breaker = CircuitBreaker(cooldown=settings.redis_breaker_seconds)
    return Coordination(
        locks=RedisConversationLocks(redis, breaker=breaker),
        idempotency=RedisIdempotencyGuard(redis, breaker=breaker),
        limiter=RedisRateLimiter(redis, settings.rate_limit_for, breaker=breaker),
        bus=bus,
        sessions=RedisSessionCache(redis, breaker=breaker),
    )


def _publisher(settings: Settings, life: Lifecycle) -> EventPublisher:
    publisher: EventPublisher
    if settings.kafka_brokers:
        kafka = KafkaPublisher(
            KafkaSettings(
                brokers=settings.kafka_brokers,
                topic_prefix=settings.kafka_topic_prefix,
                replication_factor=settings.kafka_replication_factor,
                min_insync_replicas=settings.kafka_min_insync_replicas,
            )
        )
        life.starters.append(kafka.start)  # never fails: the outbox waits for Kafka
        publisher = kafka
    else:
        publisher = LogPublisher()
    life.closers.append(publisher.close)
    return publisher


def relay_settings(settings: Settings) -> RelaySettings:
    return RelaySettings(
        batch_size=500 if settings.kafka_brokers else 100,
        retention=timedelta(hours=settings.outbox_retention_hours),
        retention_max_rows=settings.outbox_retention_max_rows,
        prune_interval_seconds=settings.outbox_prune_interval_seconds,
    )


def relay_owner(settings: Settings) -> str:
    """The outbox relay's owner id: OUTBOX_RELAY_ID, else `<host>:<port>`, which
    a restarted process keeps (so it takes its own lease straight over, see
    pipeline/outbox_relay.py) and no two live processes share (they cannot
    both listen on it). With port 0 (any free port) nothing is stable: random."""
    if settings.outbox_relay_id:
        return settings.outbox_relay_id
    if settings.port == 0:
        return f"{socket.gethostname()}:{uuid.uuid4().hex}"
    return f"{socket.gethostname()}:{settings.port}"


def _engine(settings: Settings, life: Lifecycle) -> Engine:
    if not settings.mcp_engine_url:
        return BuiltinEngine()
    try:
        engine = GrpcEngine(
            settings.mcp_engine_url,
            timeout=settings.engine_timeout,
            tls=settings.mcp_engine_tls,
            root_certificates=settings.mcp_engine_ca_pem.encode() or None,
        )
    except ValueError as exc:
        raise ConfigError(f"MCP_ENGINE_CA_FILE: {exc}") from exc
    life.closers.append(engine.close)
    return engine


def _page_tokens(settings: Settings) -> PageTokens:
    if settings.page_token_secret:
        return PageTokens(settings.page_token_secret.encode())
    try:
        key = load_or_create_page_token_key(settings.data_dir)
    except ValueError as exc:
        raise ConfigError(f"PAGE_TOKEN_SECRET not set, and {exc}") from exc
    if settings.production_shape:
        log.warning(
            "PAGE_TOKEN_SECRET not set: page and resume tokens are signed with the key in "
            "%s, so replicas must share DATA_DIR or they refuse each other's tokens",
            settings.data_dir,
        )
    return PageTokens(key)


def _verifier(settings: Settings) -> JwtVerifier:
    jwt = settings.jwt
    if jwt.configured:
        try:
            return JwtVerifier(
                public_key_pem=jwt.public_key_pem,
                secret=jwt.secret,
                algorithms=jwt.algorithms,
                issuer=jwt.issuer,
                audience=jwt.audience,
                leeway_seconds=jwt.leeway_seconds,
            )
        except ValueError as exc:
            raise ConfigError(f"JWT settings: {exc}") from exc
    if not settings.dev_jwt_key_allowed:
        raise ConfigError(DEV_KEY_REFUSED)
    key = load_or_create_dev_key(settings.data_dir)
    log.warning(
        "no JWT key configured (JWT_PUBLIC_KEY / JWT_SECRET): accepting tokens signed with the "
        "development key %s; mint one with `python -m chat_service token`",
        key.path,
    )
    return key.verifier(leeway_seconds=jwt.leeway_seconds)

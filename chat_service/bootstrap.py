"""The composition root: picks an adapter for every port from the settings
(`choose_parts`), then has wiring.py build the core around them. The one
module that knows every adapter.

Each production part is chosen by its variable alone: MONGODB_URI (store),
REDIS_URL (locks, rate limits, live fan-out),
KAFKA_BROKERS (events), MCP_ENGINE_URL (bot engine); unset, the embedded
default stands in.

Nothing is built at import time; `build_services` is called by the server
(and by tests) with explicit settings.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import uuid
from functools import partial

from opentelemetry import trace

from adapters.channels.bot_framework import BotTokens, ConnectorKeys, login_client
from adapters.channels.graph_api import GraphApi
from adapters.channels.messenger import MessengerInbound
from adapters.channels.messenger_send import messenger_sender_factory
from adapters.channels.slack import SlackInbound
from adapters.channels.slack_api import SlackWebApi
from adapters.channels.slack_send import slack_sender_factory
from adapters.channels.sms import SmsInbound
from adapters.channels.sms_send import sms_sender_factory
from adapters.channels.teams import TeamsInbound
from adapters.channels.teams_send import ConnectorApi, teams_sender_factory
from adapters.channels.twilio_api import TwilioApi
from adapters.channels.voice import VoiceInbound
from adapters.channels.whatsapp import WhatsAppInbound
from adapters.channels.whatsapp_send import whatsapp_sender_factory
from adapters.engine.builtin import BuiltinEngine
from adapters.engine.grpc_engine import GrpcEngine
from adapters.jwks import JwksKeys
from adapters.kafka import KafkaPublisher, KafkaSettings
from adapters.memory.clock import SystemClock
from adapters.memory.live_bus import InProcessLiveBus
from adapters.memory.locks import InProcessConversationLocks
from adapters.memory.log_publisher import LogPublisher
from adapters.memory.rate_limit import InProcessRateLimiter
from adapters.memory.session_cache import InProcessSessionCache
from adapters.metrics import MeasuredEngine, MeasuredLocks, MetricsServer, PrometheusMetrics
from adapters.mongo import InvalidMongoUri, MongoStore
from adapters.mongo.channel_store import MongoChannelStore
from adapters.redis.breaker import CircuitBreaker
from adapters.redis.client import connect_redis
from adapters.redis.live_bus import RedisLiveBus
from adapters.redis.locks import RedisConversationLocks
from adapters.redis.rate_limit import RedisRateLimiter
from adapters.redis.session_cache import RedisSessionCache
from adapters.secrets import AesGcmSecretBox
from adapters.security_hub import GrpcSecurityHub
from adapters.sqlite.channel_store import SqliteChannelStore
from adapters.sqlite.store import SqliteStore
from adapters.tracing import (
    HttpTracing,
    OtelTracer,
    TracedEngine,
    TracedLocks,
    TracingSettings,
    open_tracer_provider,
    shut_down,
)
from chat_service.auth import Authenticator, JwtVerifier, load_or_create_dev_key
from chat_service.config import (
    CHANNEL_SECRETS_KEY_REFUSED,
    DEV_KEY_REFUSED,
    ConfigError,
    Settings,
    parse_channel_secret_keys,
)
from chat_service.domain.enums import Channel
from chat_service.hub_auth import HubAuthenticator
from chat_service.key_files import (
    load_or_create_channel_secrets_key,
    load_or_create_page_token_key,
)
from chat_service.pipeline.page_tokens import PageTokens
from chat_service.ports import (
    ConnectionStore,
    ConversationStore,
    Engine,
    EventPublisher,
    InboundChannel,
    Metrics,
    NoMetrics,
    NoTracer,
    SecretBox,
    SigningKeys,
    Tracer,
)
from chat_service.wiring import (
    Coordination,
    Lifecycle,
    Parts,
    SenderFactory,
    Services,
    wire,
)

log = logging.getLogger(__name__)


async def build_services(settings: Settings) -> Services:
    """The service as the settings describe it: its parts chosen, then wired."""
    life = Lifecycle()
    try:
        return wire(await choose_parts(settings, life), settings)
    except BaseException:
        # Whatever was opened before the failure (the store, a Redis pool).
        for close in reversed(life.closers):
            try:
                await close()
            except Exception:
                log.exception("error while closing after a failed start")
        raise


async def choose_parts(settings: Settings, life: Lifecycle) -> Parts:
    """An adapter for every port, as the settings say; what each opens is
    closed by `life`."""
    # First, so that its exporter closes last: the spans of the stop go too.
    tracing = _tracing(settings, life)
    metrics = _metrics(settings, life)
    verifier = _authenticator(settings, life)
    tokens = _page_tokens(settings)
    # Before anything connects: a missing key is a configuration error.
    secret_box = channel_secret_box(settings)
    store = await _store(settings, life)
    channels = _channel_store(store)
    coordination = _traced_locks(
        _measured_locks(_coordination(settings, life), metrics), tracing.tracer
    )
    inbound = _inbound(settings, life)
    sender_factories = _sender_factories(settings, life, tracing)
    # SMS keeps its users' opt-outs (STOP, START) beside the connections.
    inbound[Channel.SMS] = SmsInbound(opt_outs=channels, clock=SystemClock())
    sender_factories[Channel.SMS] = _sms_sender_factory(settings, life, channels, tracing)
    return Parts(
        store=store,
        connections=channels,
        inbox=channels,
        coordination=coordination,
        publisher=_publisher(settings, life),
        engine=_traced(_measured(_engine(settings, life), metrics), tracing),
        clock=SystemClock(),
        verifier=verifier,
        tokens=tokens,
        relay_owner=relay_owner(settings),
        secret_box=secret_box,
        inbound=inbound,
        sender_factories=sender_factories,
        # The state cache is for the rest of the platform, which can only
        # read a shared one: in one process nobody would.
        state_cache=coordination.sessions if settings.redis_url else None,
        lifecycle=life,
        metrics=metrics,
        tracer=tracing.tracer,
        rpc_tracer=tracing.otel,
    )


@dataclasses.dataclass(frozen=True, slots=True)
class _Tracing:
    tracer: Tracer  # the core's steps
    otel: trace.Tracer | None  # the adapters' and the RPCs' spans; None: no tracing

    def http(self, platform: str) -> HttpTracing:
        return HttpTracing(self.otel, platform)


def _tracing(settings: Settings, life: Lifecycle) -> _Tracing:
    """Spans over OTLP to OTEL_EXPORTER_OTLP_ENDPOINT, sent in the
    background until the service stops; nothing traced without it."""
    config = settings.tracing
    if not config.endpoint:
        return _Tracing(NoTracer(), None)
    provider = open_tracer_provider(
        TracingSettings(
            endpoint=config.endpoint,
            service_name=config.service_name or settings.service_name,
            instance_id=relay_owner(settings),
            sampler=config.sampler,
            ratio=config.ratio,
        )
    )
    life.closers.append(partial(shut_down, provider))
    tracer = OtelTracer(provider)
    return _Tracing(tracer, tracer.otel)


def _traced(engine: Engine, tracing: _Tracing) -> Engine:
    """The engine, each call a span when traced."""
    if tracing.otel is None:
        return engine
    return TracedEngine(engine, tracing.otel)


def _traced_locks(coordination: Coordination, tracer: Tracer) -> Coordination:
    """The conversation locks, each wait a span when traced."""
    if isinstance(tracer, NoTracer):
        return coordination
    return dataclasses.replace(coordination, locks=TracedLocks(coordination.locks, tracer))


def _metrics(settings: Settings, life: Lifecycle) -> Metrics:
    """Prometheus metrics served on METRICS_PORT (this worker's), from the
    start of the service to its end; none without it."""
    port = settings.metrics_listen_port  # the workers' range: workers.check
    if not port:
        return NoMetrics()
    metrics = PrometheusMetrics(tenant_labels=settings.metrics_tenant_labels)
    server = MetricsServer(metrics, settings.host, port)
    life.starters.append(server.start)
    life.closers.append(server.close)
    return metrics


def _measured(engine: Engine, metrics: Metrics) -> Engine:
    """The engine, timed when metrics are recorded."""
    if isinstance(metrics, NoMetrics):
        return engine
    return MeasuredEngine(engine, metrics)


def _measured_locks(coordination: Coordination, metrics: Metrics) -> Coordination:
    """The conversation locks, their waits timed when metrics are recorded."""
    if isinstance(metrics, NoMetrics):
        return coordination
    return dataclasses.replace(coordination, locks=MeasuredLocks(coordination.locks, metrics))


def _sender_factories(
    settings: Settings, life: Lifecycle, tracing: _Tracing
) -> dict[Channel, SenderFactory]:
    """The platforms replies are delivered to: one Graph API client (and
    connection pool) per platform, closed on shutdown."""
    whatsapp = GraphApi(settings.meta_graph_api_base_url, tracing=tracing.http("whatsapp"))
    life.closers.append(whatsapp.aclose)
    messenger = GraphApi(settings.meta_graph_api_base_url, tracing=tracing.http("messenger"))
    life.closers.append(messenger.aclose)
    slack = SlackWebApi(settings.slack_api_base_url, tracing=tracing.http("slack"))
    life.closers.append(slack.aclose)
    return {
        Channel.WHATSAPP: whatsapp_sender_factory(
            whatsapp, rate_per_second=settings.whatsapp_rate_per_second
        ),
        Channel.MESSENGER: messenger_sender_factory(messenger),
        Channel.TEAMS: _teams_sender_factory(settings, life, tracing),
        Channel.SLACK: slack_sender_factory(slack),
    }


def _sms_sender_factory(
    settings: Settings, life: Lifecycle, opt_outs: ConnectionStore, tracing: _Tracing
) -> SenderFactory:
    """SMS replies through Twilio's REST API; nothing to a number that sent STOP."""
    twilio = TwilioApi(settings.twilio_api_base_url, tracing=tracing.http("sms"))
    life.closers.append(twilio.aclose)
    return sms_sender_factory(twilio, opt_outs)


def _teams_sender_factory(settings: Settings, life: Lifecycle, tracing: _Tracing) -> SenderFactory:
    """Teams replies: the Bot Connector's endpoints, and the bots' tokens."""
    connector, login = ConnectorApi(tracing=tracing.http("teams")), login_client()
    life.closers.extend((connector.aclose, login.aclose))
    tokens = BotTokens(settings.teams_token_url, http=login, tracing=tracing.http("teams"))
    return teams_sender_factory(connector, tokens, token_url=settings.teams_token_url)


def _inbound(settings: Settings, life: Lifecycle) -> dict[Channel, InboundChannel]:
    """The platforms whose webhooks are taken in."""
    return {
        Channel.WHATSAPP: WhatsAppInbound(graph_base_url=settings.meta_graph_api_base_url),
        Channel.MESSENGER: MessengerInbound(),
        Channel.TEAMS: _teams_inbound(settings, life),
        Channel.SLACK: SlackInbound(clock=SystemClock()),
        # Answered in the webhook's response (pipeline/voice_calls.py).
        Channel.VOICE: VoiceInbound(clock=SystemClock()),
    }


def _teams_inbound(settings: Settings, life: Lifecycle) -> TeamsInbound:
    """Teams activities, checked against the Bot Connector's published keys
    (fetched when the first activity comes)."""
    login = login_client()
    life.closers.append(login.aclose)
    return TeamsInbound(ConnectorKeys(settings.teams_openid_metadata_url, http=login))


async def _store(settings: Settings, life: Lifecycle) -> ConversationStore:
    store: ConversationStore
    if settings.mongodb_uri:
        try:
            store = await MongoStore.open(
                settings.mongodb_uri,
                max_pool_size=settings.max_connections_mongo,
                timeout_ms=settings.request_timeout_ms,
            )
        except InvalidMongoUri as exc:
            raise ConfigError(f"MONGODB_URI is not usable: {exc}") from None
    else:
        store = await SqliteStore.open(
            settings.data_dir / "chat.sqlite3", synchronous=settings.sqlite_synchronous
        )
    life.closers.append(store.close)
    return store


def _channel_store(store: ConversationStore) -> MongoChannelStore | SqliteChannelStore:
    """Channel connections and the webhook inbox, kept in the conversations'
    file or database through the store's own connections (closed with it)."""
    if isinstance(store, MongoStore):
        return MongoChannelStore(store)
    if isinstance(store, SqliteStore):
        return SqliteChannelStore(store)
    raise TypeError(f"no channel store beside a {type(store).__name__}")


def in_process_coordination(settings: Settings) -> Coordination:
    """One process: everything in memory (DESIGN.md's embedded default)."""
    return Coordination(
        locks=InProcessConversationLocks(),
        limiter=InProcessRateLimiter(settings.rate_limit_for),
        bus=InProcessLiveBus(),
        sessions=InProcessSessionCache(),
    )


def _coordination(settings: Settings, life: Lifecycle) -> Coordination:
    if not settings.redis_url:
        return in_process_coordination(settings)
    redis = connect_redis(settings.redis_url, max_connections=settings.max_connections_redis)
    life.closers.append(redis.aclose)
    bus = RedisLiveBus(redis)
    life.starters.append(bus.start)
    life.closers.append(bus.close)
    # One breaker for the one Redis: what one adapter learns, all use.
    breaker = CircuitBreaker(cooldown=settings.redis_breaker_seconds)
    return Coordination(
        locks=RedisConversationLocks(redis, breaker=breaker),
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


def relay_owner(settings: Settings) -> str:
    """The outbox relay's owner id: OUTBOX_RELAY_ID, else `<host>:<port>`, which
    a restarted process keeps (so it takes its own lease straight over, see
    pipeline/outbox_relay.py) and no two live processes share (they cannot
    both listen on it). With port 0 (any free port) nothing is stable: random.
    The workers of `--workers N` share the port, so each adds its index
    (`/worker-<i>`), which its restarted slot keeps."""
    if settings.outbox_relay_id:
        owner = settings.outbox_relay_id
    elif settings.port == 0:
        owner = f"{socket.gethostname()}:{uuid.uuid4().hex}"
    else:
        owner = f"{socket.gethostname()}:{settings.port}"
    if settings.worker_index is not None:
        return f"{owner}/worker-{settings.worker_index}"
    return owner


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


def _authenticator(settings: Settings, life: Lifecycle) -> Authenticator:
    """SECURITY_HUB_URL: the hub decides; JWT_JWKS_URL: the identity
    provider's published keys; else the configured (or development) key."""
    jwt = settings.jwt
    if settings.security_hub_url:
        try:
            hub = GrpcSecurityHub(
                settings.security_hub_url,
                timeout=settings.security_hub_timeout_ms / 1000,
                tls=settings.security_hub_tls,
                root_certificates=settings.security_hub_ca_pem.encode() or None,
            )
        except ValueError as exc:
            raise ConfigError(f"SECURITY_HUB_CA_FILE: {exc}") from exc
        life.closers.append(hub.close)
        return HubAuthenticator(hub, cache_seconds=settings.security_hub_cache_seconds)
    if jwt.jwks_url:
        keys = JwksKeys(
            jwt.jwks_url,
            min_refresh_seconds=jwt.jwks_min_refresh_seconds,
            max_age_seconds=jwt.jwks_max_age_seconds,
        )
        life.starters.append(keys.start)
        life.closers.append(keys.aclose)
        return _jwt_verifier(settings, signing_keys=keys)
    return _verifier(settings)


def _jwt_verifier(
    settings: Settings,
    *,
    public_key_pem: str = "",
    secret: str = "",
    signing_keys: SigningKeys | None = None,
) -> JwtVerifier:
    """A verifier of the configured JWT rules with these keys (a static key
    or secret, or a JWKS): a refused combination is a configuration error."""
    jwt = settings.jwt
    try:
        return JwtVerifier(
            public_key_pem=public_key_pem,
            secret=secret,
            signing_keys=signing_keys,
            algorithms=jwt.algorithms,
            issuer=jwt.issuer,
            audience=jwt.audience,
            leeway_seconds=jwt.leeway_seconds,
        )
    except ValueError as exc:
        raise ConfigError(f"JWT settings: {exc}") from exc


def _verifier(settings: Settings) -> JwtVerifier:
    jwt = settings.jwt
    if jwt.configured:
        return _jwt_verifier(settings, public_key_pem=jwt.public_key_pem, secret=jwt.secret)
    if not settings.dev_jwt_key_allowed:
        raise ConfigError(DEV_KEY_REFUSED)
    key = load_or_create_dev_key(settings.data_dir)
    log.warning(
        "no JWT key configured (JWT_PUBLIC_KEY / JWT_SECRET): accepting tokens signed with the "
        "development key %s; mint one with `python -m chat_service token`",
        key.path,
    )
    return key.verifier(leeway_seconds=jwt.leeway_seconds)


def channel_secret_box(settings: Settings) -> SecretBox:
    """The box that seals tenants' channel credentials: CHANNEL_SECRETS_KEY's
    keys, else (development only) a key made once in DATA_DIR."""
    keys = settings.channel_secrets_keys
    if not keys:
        if settings.production_shape:
            raise ConfigError(CHANNEL_SECRETS_KEY_REFUSED)
        path, text = load_or_create_channel_secrets_key(settings.data_dir)
        keys = parse_channel_secret_keys(str(path), text)
        if not keys:
            raise ConfigError(f"{path} holds no key; delete it to have a new one made")
        log.warning(
            "CHANNEL_SECRETS_KEY not set: channel credentials are sealed with the development "
            "key in %s; losing that file loses every stored secret",
            path,
        )
    return AesGcmSecretBox([(each.kid, each.key) for each in keys])

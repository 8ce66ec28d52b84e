"""Settings from the environment.

Names follow the seed's `.env` (SERVICE_PORT, MONGODB_URI, REDIS_URL,
MCP_ENGINE_URL, KAFKA_BROKERS, ...); the variables this service adds are
listed in the README. Every value has a default that runs the service on
its embedded parts; a bad value fails start-up with a message naming the
variable.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

# Without a bound of its own, no numeric setting means anything past these.
MAX_NUMBER = 1e9
MAX_INTEGER = 2**53
# One process per core is the point of WORKERS; past this it is a typo.
MAX_WORKERS = 64
# An HMAC key shorter than its hash is weaker than the hash (RFC 2104, 3).
MIN_PAGE_TOKEN_SECRET_BYTES = 32
# Each tenant METRICS_TENANT_LABELS lists is a series of its own per labelled
# metric and channel: a few large tenants, not the tenant directory.
MAX_METRICS_TENANT_LABELS = 100
_HOUR_MS = 3_600_000

DEV_KEY_REFUSED = (
    "no JWT key is configured (JWT_PUBLIC_KEY, JWT_SECRET or their _FILE forms, "
    "JWT_JWKS_URL, or SECURITY_HUB_URL) while "
    "MONGODB_URI or REDIS_URL is set: a production deployment must not trust the "
    "self-made development key. Configure your identity provider's key, or set "
    "JWT_DEV_KEY=allow to use the development key anyway (test set-ups only)"
)


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


# Channel secrets (adapters/secrets/aes_gcm.py): AES-256-GCM keys with ids.
CHANNEL_SECRET_KEY_BYTES = 32
CHANNEL_SECRET_KID = re.compile(r"[A-Za-z0-9_-]{1,32}")
CHANNEL_SECRETS_KEY_REFUSED = (
    "CHANNEL_SECRETS_KEY (or CHANNEL_SECRETS_KEY_FILE) is not set while MONGODB_URI or "
    "REDIS_URL is set: a production deployment must not encrypt tenants' channel "
    "credentials with a key made in DATA_DIR (replicas would not share it, and losing "
    "DATA_DIR would lose every stored secret). Set CHANNEL_SECRETS_KEY=kid:base64key"
)


@dataclass(frozen=True, slots=True)
class ChannelSecretKey:
    kid: str
    key: bytes = field(repr=False)  # never in a log line or a repr


def parse_channel_secret_keys(source: str, text: str) -> tuple[ChannelSecretKey, ...]:
    """`kid:base64key[,kid:base64key...]`, the first key current (it seals;
    all open). Errors name `source` and never quote key material."""
    keys: list[ChannelSecretKey] = []
    for number, item in enumerate((part.strip() for part in text.split(",")), start=1):
        if not item:
            continue
        kid, colon, encoded = item.partition(":")
        kid = kid.strip()
        if not colon or not CHANNEL_SECRET_KID.fullmatch(kid):
            raise ConfigError(
                f"{source}: entry {number} must be kid:base64key, the kid 1 to 32 of "
                "A-Z a-z 0-9 _ -"
            )
        try:  # standard or URL-safe alphabet, padding optional
            compact = encoded.strip().replace("-", "+").replace("_", "/").rstrip("=")
            key = base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
        except (binascii.Error, ValueError):
            key = b""
        if len(key) != CHANNEL_SECRET_KEY_BYTES:
            raise ConfigError(
                f"{source}: the key of {kid!r} must be {CHANNEL_SECRET_KEY_BYTES} bytes "
                "in base64 (e.g. `openssl rand -base64 32`)"
            )
        if any(each.kid == kid for each in keys):
            raise ConfigError(f"{source}: the key id {kid!r} appears twice")
        keys.append(ChannelSecretKey(kid, key))
    if text.strip() and not keys:
        raise ConfigError(f"{source}: expected kid:base64key[,kid:base64key...]")
    return tuple(keys)


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A token bucket: `rate` tokens per second, at most `burst` saved up."""

    rate: float
    burst: int


@dataclass(frozen=True, slots=True)
class JwtSettings:
    public_key_pem: str = ""  # EdDSA, ES256 or RS256
    secret: str = ""  # HS256
    algorithms: tuple[str, ...] = ()
    issuer: str = ""
    audience: str = ""
    leeway_seconds: float = 30.0
    # JWT_DEV_KEY: "allow" or "refuse" the self-made development key when no
    # key is configured; "auto" allows it unless MONGODB_URI or REDIS_URL is
    # set (a production shape).
    dev_key: str = "auto"
    # JWT_JWKS_URL: keys by `kid` from the identity provider (adapters/jwks/),
    # fetched again at most once per min_refresh, and when older than the
    # response's max-age (bounded by max_age).
    jwks_url: str = ""
    jwks_min_refresh_seconds: float = 30.0
    jwks_max_age_seconds: float = 300.0

    @property
    def configured(self) -> bool:
        return bool(self.public_key_pem or self.secret or self.jwks_url)


# OTEL_TRACES_SAMPLER's values (OpenTelemetry's SDK environment variables);
# the *traceidratio ones sample OTEL_TRACES_SAMPLER_ARG of the traces.
TRACE_SAMPLERS = frozenset(
    {
        "always_on",
        "always_off",
        "traceidratio",
        "parentbased_always_on",
        "parentbased_always_off",
        "parentbased_traceidratio",
    }
)


@dataclass(frozen=True, slots=True)
class TraceSettings:
    """Tracing (adapters/tracing/), named by OpenTelemetry's own variables."""

    # OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else OTEL_EXPORTER_OTLP_ENDPOINT: an
    # OTLP/gRPC collector (http:// in plaintext, https:// with TLS); "" (the
    # default): nothing is traced, and calls out carry no trace context.
    endpoint: str = ""
    service_name: str = ""  # OTEL_SERVICE_NAME; "": SERVICE_NAME
    sampler: str = "parentbased_always_on"  # OTEL_TRACES_SAMPLER
    ratio: float = 1.0  # OTEL_TRACES_SAMPLER_ARG


@dataclass(frozen=True, slots=True)
class Settings:
    service_name: str = "chat-service"
    host: str = "0.0.0.0"
    port: int = 8001
    # METRICS_PORT: Prometheus's /metrics over HTTP on SERVICE_HOST; 0 (the
    # default): none. Worker i of `--workers N` serves it on METRICS_PORT + i.
    metrics_port: int = 0
    # METRICS_TENANT_LABELS: tenants whose per-tenant metrics carry
    # tenant="<id>"; the rest are tenant="other". Empty: no tenant label.
    metrics_tenant_labels: tuple[str, ...] = ()
    tracing: TraceSettings = field(default_factory=TraceSettings)
    log_level: str = "INFO"
    log_format: str = "text"
    # WORKERS (or `serve --workers N`): processes serving one port
    # (chat_service/workers.py); more than one needs REDIS_URL.
    workers: int = 1
    # Set by the supervisor in the processes it starts (never a variable):
    # which of the `workers` this one is, 0-based; None in a lone process.
    worker_index: int | None = None
    data_dir: Path = Path("var")
    sqlite_synchronous: str = "NORMAL"
    mongodb_uri: str = ""
    redis_url: str = ""
    mcp_engine_url: str = ""
    mcp_engine_tls: bool = False
    mcp_engine_ca_pem: str = ""  # trusted roots for the engine; empty: the system's
    security_hub_url: str = ""
    security_hub_tls: bool = False
    security_hub_ca_pem: str = ""  # trusted roots for the hub; empty: the system's
    # Each call to the Security Hub; past it the RPC fails UNAVAILABLE.
    security_hub_timeout_ms: int = 2_000
    # How long its answers are reused (a token's never past its expiry).
    security_hub_cache_seconds: float = 30.0
    kafka_brokers: tuple[str, ...] = ()
    kafka_topic_prefix: str = "chatbot.platform"
    kafka_replication_factor: int | None = None  # None: min(3, the cluster's brokers)
    kafka_min_insync_replicas: int = 2
    outbox_relay_id: str = ""  # "": <hostname>:<SERVICE_PORT> (bootstrap.relay_owner)
    outbox_retention_hours: float = 168.0
    # Processed webhook deliveries are kept this long (a redelivered call
    # within it is recognized), then pruned.
    inbox_retention_hours: float = 168.0
    outbox_retention_max_rows: int = 1_000_000
    outbox_prune_interval_seconds: float = 60.0
    max_connections_mongo: int = 100
    max_connections_redis: int = 50
    # After a call fails to reach Redis, calls skip it for this long (then
    # one probes): adapters/redis/breaker.py.
    redis_breaker_seconds: float = 3.0
    request_timeout_ms: int = 30_000
    mcp_engine_timeout_ms: int = 8_000
    lock_timeout_ms: int = 10_000
    stream_buffer_size: int = 256
    stream_stall_grace_seconds: float = 5.0
    stream_first_frame_timeout_seconds: float = 10.0
    max_streams_per_tenant: int = 1000
    max_watches_per_tenant: int = 100
    shutdown_delay_seconds: float = 1.0
    shutdown_grace_seconds: float = 10.0
    rate_limit: RateLimit = RateLimit(rate=100.0, burst=200)
    tenant_rate_limits: Mapping[str, RateLimit] = field(default_factory=dict)
    jwt: JwtSettings = JwtSettings()
    # Signs page and resume tokens; every process of a deployment needs the
    # same. Empty: a key made in DATA_DIR (shared by processes sharing it).
    page_token_secret: str = ""
    # CHANNEL_SECRETS_KEY: the first seals, all open. Empty: a key made in
    # DATA_DIR (development only: refused in a production shape).
    channel_secrets_keys: tuple[ChannelSecretKey, ...] = ()
    # How long a process keeps a tenant's channel connections (secrets
    # opened) before reading them again: another process's change takes
    # effect here within this time (this process's at once).
    channel_cache_seconds: float = 300.0
    # Meta's Graph API (WhatsApp Cloud API, Messenger Send API), version
    # pinned; tests point it at a local emulator.
    meta_graph_api_base_url: str = "https://graph.facebook.com/v23.0"
    # Per business phone number: Cloud API's default throughput is 80
    # messages per second (developers.facebook.com/documentation/business-
    # messaging/whatsapp/throughput).
    whatsapp_rate_per_second: float = 80.0
    # Slack's Web API (chat.postMessage); tests point it at a local emulator.
    slack_api_base_url: str = "https://slack.com/api"
    # Twilio's REST API (Messages.json for SMS replies); tests point it at a
    # local emulator.
    twilio_api_base_url: str = "https://api.twilio.com"
    # Bot Framework (Teams): where the Bot Connector's signing keys are
    # published, and the token endpoint of the bots' client credentials
    # (learn.microsoft.com/azure/bot-service/rest-api/bot-framework-rest-
    # connector-authentication); tests point both at a local emulator.
    teams_openid_metadata_url: str = (
        "https://login.botframework.com/v1/.well-known/openidconfiguration"
    )
    teams_token_url: str = (
        "https://login.microsoftonline.com/botframework.com"  # noqa: S105 (a URL)
        "/oauth2/v2.0/token"
    )
    fallback_text: str = "Sorry, I can't answer right now. Please try again in a moment."
    # Voice calls wait for the bot in the webhook's answer: Twilio gives up
    # after 15 s (twilio.com/docs/usage/webhooks/webhooks-connection-overrides)
    # and the edge's webhook route after 10 s (deploy/envoy/envoy.yaml), so
    # the bot gets less; past it the caller hears FALLBACK_MESSAGE.
    voice_reply_timeout_seconds: float = 8.0
    # What a caller hears when the call is answered, before saying anything.
    voice_greeting: str = "Hello! How can I help you?"

    @property
    def production_shape(self) -> bool:
        """Shared production parts are configured (replicas are likely)."""
        return bool(self.mongodb_uri or self.redis_url)

    @property
    def dev_jwt_key_allowed(self) -> bool:
        """Whether the self-made development JWT key may stand in for a
        configured one (JWT_DEV_KEY)."""
        if self.jwt.dev_key == "auto":
            return not self.production_shape
        return self.jwt.dev_key == "allow"

    @property
    def metrics_listen_port(self) -> int:
        """This process's metrics port (0: none): a worker's is shifted by its
        index, as the workers share SERVICE_PORT but cannot share this one
        (each has its own counters)."""
        if not self.metrics_port:
            return 0
        return self.metrics_port + (self.worker_index or 0)

    @property
    def engine_timeout(self) -> float:
        return self.mcp_engine_timeout_ms / 1000

    @property
    def lock_timeout(self) -> float:
        return self.lock_timeout_ms / 1000

    @property
    def request_timeout(self) -> float:
        return self.request_timeout_ms / 1000

    def rate_limit_for(self, tenant_id: str) -> RateLimit:
        return self.tenant_rate_limits.get(tenant_id, self.rate_limit)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        r = _Reader(env)
        defaults = cls()
        settings = cls(
            service_name=r.text("SERVICE_NAME", defaults.service_name),
            host=r.text("SERVICE_HOST", defaults.host),
            port=r.integer("SERVICE_PORT", defaults.port, low=0, high=65535),
            metrics_port=r.integer("METRICS_PORT", defaults.metrics_port, low=0, high=65535),
            tracing=r.tracing(),
            metrics_tenant_labels=_metrics_tenants(r.csv("METRICS_TENANT_LABELS")),
            log_level=r.choice(
                "LOG_LEVEL", defaults.log_level, {"DEBUG", "INFO", "WARNING", "ERROR"}, upper=True
            ),
            log_format=r.choice("LOG_FORMAT", defaults.log_format, {"text", "json"}),
            workers=r.integer("WORKERS", defaults.workers, low=1, high=MAX_WORKERS),
            data_dir=Path(r.text("DATA_DIR", str(defaults.data_dir))),
            sqlite_synchronous=r.choice(
                "SQLITE_SYNCHRONOUS", defaults.sqlite_synchronous, {"NORMAL", "FULL"}, upper=True
            ),
            mongodb_uri=r.url("MONGODB_URI", {"mongodb", "mongodb+srv"}),
            redis_url=r.url("REDIS_URL", {"redis", "rediss", "unix"}),
            mcp_engine_url=r.text("MCP_ENGINE_URL", ""),
            mcp_engine_tls=r.flag("MCP_ENGINE_TLS", defaults.mcp_engine_tls),
            mcp_engine_ca_pem=r.text_or_file("MCP_ENGINE_CA"),
            security_hub_url=r.text("SECURITY_HUB_URL", ""),
            security_hub_tls=r.flag("SECURITY_HUB_TLS", defaults.security_hub_tls),
            security_hub_ca_pem=r.text_or_file("SECURITY_HUB_CA"),
            security_hub_timeout_ms=r.integer(
                "SECURITY_HUB_TIMEOUT_MS", defaults.security_hub_timeout_ms, low=1, high=60_000
            ),
            security_hub_cache_seconds=r.number(
                "SECURITY_HUB_CACHE_SECONDS", defaults.security_hub_cache_seconds, low=0, high=300
            ),
            kafka_brokers=r.hosts("KAFKA_BROKERS"),
            kafka_topic_prefix=r.text("KAFKA_TOPIC_PREFIX", defaults.kafka_topic_prefix),
            # Unset (0 here) means: as many replicas as the cluster has, up to 3.
            kafka_replication_factor=r.integer("KAFKA_REPLICATION_FACTOR", 0, low=1) or None,
            kafka_min_insync_replicas=r.integer(
                "KAFKA_MIN_INSYNC_REPLICAS", defaults.kafka_min_insync_replicas, low=1
            ),
            outbox_relay_id=r.text("OUTBOX_RELAY_ID", ""),
            outbox_retention_hours=r.number(
                "OUTBOX_RETENTION_HOURS", defaults.outbox_retention_hours, low=0.001
            ),
            inbox_retention_hours=r.number(
                "INBOX_RETENTION_HOURS", defaults.inbox_retention_hours, low=0.001
            ),
            outbox_retention_max_rows=r.integer(
                "OUTBOX_RETENTION_MAX_ROWS", defaults.outbox_retention_max_rows, low=1
            ),
            outbox_prune_interval_seconds=r.number(
                "OUTBOX_PRUNE_INTERVAL_SECONDS", defaults.outbox_prune_interval_seconds, low=0.01
            ),
            max_connections_mongo=r.integer(
                "MAX_CONNECTIONS_MONGO", defaults.max_connections_mongo, low=1, high=10_000
            ),
            max_connections_redis=r.integer(
                "MAX_CONNECTIONS_REDIS", defaults.max_connections_redis, low=1, high=10_000
            ),
            redis_breaker_seconds=r.number(
                "REDIS_BREAKER_SECONDS", defaults.redis_breaker_seconds, low=0, high=3600
            ),
            request_timeout_ms=r.integer(
                "REQUEST_TIMEOUT_MS", defaults.request_timeout_ms, low=100, high=_HOUR_MS
            ),
            mcp_engine_timeout_ms=r.integer(
                "MCP_ENGINE_TIMEOUT_MS", defaults.mcp_engine_timeout_ms, low=1
            ),
            lock_timeout_ms=r.integer(
                "LOCK_TIMEOUT_MS", defaults.lock_timeout_ms, low=1, high=_HOUR_MS
            ),
            stream_buffer_size=r.integer(
                "STREAM_BUFFER_SIZE", defaults.stream_buffer_size, low=1, high=100_000
            ),
            stream_stall_grace_seconds=r.number(
                "STREAM_STALL_GRACE_SECONDS", defaults.stream_stall_grace_seconds, low=0, high=3600
            ),
            stream_first_frame_timeout_seconds=r.number(
                "STREAM_FIRST_FRAME_TIMEOUT_SECONDS",
                defaults.stream_first_frame_timeout_seconds,
                low=0.001,
            ),
            max_streams_per_tenant=r.integer(
                "MAX_STREAMS_PER_TENANT", defaults.max_streams_per_tenant, low=1
            ),
            max_watches_per_tenant=r.integer(
                "MAX_WATCHES_PER_TENANT", defaults.max_watches_per_tenant, low=1
            ),
            shutdown_delay_seconds=r.number(
                "SHUTDOWN_DELAY_SECONDS", defaults.shutdown_delay_seconds, low=0, high=3600
            ),
            shutdown_grace_seconds=r.number(
                "SHUTDOWN_GRACE_SECONDS", defaults.shutdown_grace_seconds, low=0, high=3600
            ),
            rate_limit=RateLimit(
                rate=r.number("RATE_LIMIT_PER_SECOND", defaults.rate_limit.rate, low=0.001),
                burst=r.integer("RATE_LIMIT_BURST", defaults.rate_limit.burst, low=1),
            ),
            tenant_rate_limits=r.tenant_limits("RATE_LIMIT_TENANTS"),
            jwt=JwtSettings(
                public_key_pem=r.text_or_file("JWT_PUBLIC_KEY"),
                secret=r.text_or_file("JWT_SECRET"),
                algorithms=r.csv("JWT_ALGORITHMS"),
                issuer=r.text("JWT_ISSUER", ""),
                audience=r.text("JWT_AUDIENCE", ""),
                leeway_seconds=r.number("JWT_LEEWAY_SECONDS", 30.0, low=0, high=600),
                dev_key=r.choice("JWT_DEV_KEY", "auto", {"auto", "allow", "refuse"}),
                jwks_url=r.url("JWT_JWKS_URL", {"http", "https"}),
                jwks_min_refresh_seconds=r.number(
                    "JWT_JWKS_MIN_REFRESH_SECONDS", 30.0, low=1, high=86_400
                ),
                jwks_max_age_seconds=r.number(
                    "JWT_JWKS_MAX_AGE_SECONDS", 300.0, low=1, high=86_400
                ),
            ),
            page_token_secret=r.text_or_file("PAGE_TOKEN_SECRET"),
            channel_secrets_keys=r.channel_secret_keys("CHANNEL_SECRETS_KEY"),
            channel_cache_seconds=r.number(
                "CHANNEL_CACHE_SECONDS", defaults.channel_cache_seconds, low=0, high=86_400
            ),
            meta_graph_api_base_url=(
                r.url("META_GRAPH_API_BASE_URL", {"http", "https"}).rstrip("/")
                or defaults.meta_graph_api_base_url
            ),
            whatsapp_rate_per_second=r.number(
                "WHATSAPP_RATE_PER_SECOND", defaults.whatsapp_rate_per_second, low=0.01, high=10_000
            ),
            slack_api_base_url=(
                r.url("SLACK_API_BASE_URL", {"http", "https"}).rstrip("/")
                or defaults.slack_api_base_url
            ),
            twilio_api_base_url=(
                r.url("TWILIO_API_BASE_URL", {"http", "https"}).rstrip("/")
                or defaults.twilio_api_base_url
            ),
            teams_openid_metadata_url=(
                r.url("TEAMS_OPENID_METADATA_URL", {"http", "https"})
                or defaults.teams_openid_metadata_url
            ),
            teams_token_url=(
                r.url("TEAMS_TOKEN_URL", {"http", "https"}) or defaults.teams_token_url
            ),
            fallback_text=r.text("FALLBACK_MESSAGE", defaults.fallback_text),
            voice_reply_timeout_seconds=r.number(
                "VOICE_REPLY_TIMEOUT_SECONDS",
                defaults.voice_reply_timeout_seconds,
                low=0.1,
                high=9.0,
            ),
            voice_greeting=r.text("VOICE_GREETING", defaults.voice_greeting),
        )
        if settings.metrics_port and settings.metrics_port == settings.port:
            raise ConfigError("METRICS_PORT must differ from SERVICE_PORT")
        if settings.metrics_tenant_labels and not settings.metrics_port:
            raise ConfigError("METRICS_TENANT_LABELS needs METRICS_PORT (no metrics are served)")
        if settings.mcp_engine_timeout_ms > settings.request_timeout_ms:
            raise ConfigError("MCP_ENGINE_TIMEOUT_MS must not exceed REQUEST_TIMEOUT_MS")
        _check_token_sources(settings)
        if settings.security_hub_url:
            _check_grpc_target("SECURITY_HUB_URL", settings.security_hub_url)
        if settings.security_hub_ca_pem and not settings.security_hub_tls:
            raise ConfigError(
                "SECURITY_HUB_CA_FILE (or SECURITY_HUB_CA) needs SECURITY_HUB_TLS=true"
            )
        if settings.mcp_engine_ca_pem and not settings.mcp_engine_tls:
            raise ConfigError("MCP_ENGINE_CA_FILE (or MCP_ENGINE_CA) needs MCP_ENGINE_TLS=true")
        if 0 < len(settings.page_token_secret.encode()) < MIN_PAGE_TOKEN_SECRET_BYTES:
            raise ConfigError(
                f"PAGE_TOKEN_SECRET must be at least {MIN_PAGE_TOKEN_SECRET_BYTES} bytes long"
            )
        replication = settings.kafka_replication_factor
        if replication is not None and settings.kafka_min_insync_replicas > replication:
            # acks=all could then never be satisfied: every publish would fail.
            raise ConfigError(
                "KAFKA_MIN_INSYNC_REPLICAS must not exceed KAFKA_REPLICATION_FACTOR "
                f"({settings.kafka_min_insync_replicas} > {replication})"
            )
        return settings


def variables_read() -> frozenset[str]:
    """Every environment variable Settings.from_env looks at (for tools that
    must start the service from none of them, or check that a file names
    only real ones)."""
    env = _Recording()
    Settings.from_env(env)
    return frozenset(env.asked)


class _Recording(dict[str, str]):
    """An empty environment that remembers every name it is asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: set[str] = set()

    def get(self, key: str, default: str | None = None) -> str | None:  # type: ignore[override]
        self.asked.add(key)
        return super().get(key, default)


class _Reader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def _raw(self, name: str) -> str | None:
        value = self._env.get(name)
        if value is None or value.strip() == "":
            return None
        return value.strip()

    def text(self, name: str, default: str) -> str:
        value = self._raw(name)
        return default if value is None else value

    def text_or_file(self, name: str) -> str:
        """NAME holds the value itself; NAME_FILE names a file holding it."""
        value = self._raw(name)
        path = self._raw(f"{name}_FILE")
        if value is not None and path is not None:
            raise ConfigError(f"set either {name} or {name}_FILE, not both")
        if path is None:
            return value or ""
        try:
            return Path(path).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{name}_FILE: cannot read {path}: {exc.strerror}") from exc

    def channel_secret_keys(self, name: str) -> tuple[ChannelSecretKey, ...]:
        source = f"{name}_FILE" if self._raw(f"{name}_FILE") is not None else name
        return parse_channel_secret_keys(source, self.text_or_file(name))

    def flag(self, name: str, default: bool) -> bool:
        value = self._raw(name)
        if value is None:
            return default
        if value.lower() in {"true", "1", "yes", "on"}:
            return True
        if value.lower() in {"false", "0", "no", "off"}:
            return False
        raise ConfigError(f"{name} must be true or false, got {value!r}")

    def integer(
        self, name: str, default: int, *, low: int | None = 0, high: int | None = MAX_INTEGER
    ) -> int:
        """An integer in [low, high]; by default not negative and at most 2**53."""
        value = self._raw(name)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:  # also past int()'s digit limit
            raise ConfigError(f"{name} must be an integer, got {value[:40]!r}") from None
        _check_range(name, number, low, high)
        return number

    def number(
        self, name: str, default: float, *, low: float | None = 0, high: float | None = MAX_NUMBER
    ) -> float:
        """A finite number in [low, high]; by default not negative and at most
        10**9. NaN would pass every comparison (JWT_LEEWAY_SECONDS=nan kept
        expired tokens valid), so non-finite values are refused first."""
        value = self._raw(name)
        if value is None:
            return default
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"{name} must be a number, got {value[:40]!r}") from None
        if not math.isfinite(number):
            raise ConfigError(f"{name} must be a finite number, got {value[:40]!r}")
        _check_range(name, number, low, high)
        return number

    def choice(self, name: str, default: str, allowed: set[str], *, upper: bool = False) -> str:
        value = self._raw(name)
        if value is None:
            return default
        value = value.upper() if upper else value.lower()
        if value not in allowed:
            raise ConfigError(f"{name} must be one of {sorted(allowed)}, got {value!r}")
        return value

    def tracing(self) -> TraceSettings:
        defaults = TraceSettings()
        for name in ("OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"):
            # The exporter here speaks OTLP over gRPC only.
            self.choice(name, "grpc", {"grpc"})
        return TraceSettings(
            endpoint=self.url("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", {"http", "https"})
            or self.url("OTEL_EXPORTER_OTLP_ENDPOINT", {"http", "https"}),
            service_name=self.text("OTEL_SERVICE_NAME", defaults.service_name),
            sampler=self.choice("OTEL_TRACES_SAMPLER", defaults.sampler, set(TRACE_SAMPLERS)),
            ratio=self.number("OTEL_TRACES_SAMPLER_ARG", defaults.ratio, low=0, high=1),
        )

    def csv(self, name: str) -> tuple[str, ...]:
        value = self._raw(name)
        if value is None:
            return ()
        return tuple(part.strip() for part in value.split(",") if part.strip())

    def url(self, name: str, schemes: set[str]) -> str:
        """A URL of one of `schemes` whose hosts (`host[:port]`, comma
        separated) have ports in 1..65535, or a unix socket path: checked
        here, so that a typo fails start-up naming the variable rather than
        deep inside a client library. Never quoted: it may hold a password."""
        value = self._raw(name)
        if value is None:
            return ""
        scheme, separator, rest = value.partition("://")
        if not separator or scheme.lower() not in schemes:
            expected = " or ".join(f"{each}://" for each in sorted(schemes))
            raise ConfigError(f"{name} must start with {expected}")
        if scheme.lower() == "unix":
            if not rest.strip("/"):
                raise ConfigError(f"{name} must name a socket path")
            return value
        # Between "://" and the path, after any "user:password@".
        hosts = rest.split("/", 1)[0].rpartition("@")[2]
        for host in hosts.split(","):
            _check_host(name, host)
        return value

    def hosts(self, name: str) -> tuple[str, ...]:
        """Comma-separated `host[:port]` entries (ports in 1..65535)."""
        hosts = self.csv(name)
        for host in hosts:
            _check_host(name, host)
        return hosts

    def tenant_limits(self, name: str) -> dict[str, RateLimit]:
        """`tenant=rate:burst,other=rate:burst`."""
        limits: dict[str, RateLimit] = {}
        for item in self.csv(name):
            tenant, sep, spec = item.partition("=")
            rate, sep2, burst = spec.partition(":")
            try:
                if not (sep and sep2 and tenant.strip()):
                    raise ValueError
                limit = RateLimit(rate=float(rate), burst=int(burst))
                if not (0 < limit.rate <= MAX_NUMBER and 1 <= limit.burst <= MAX_INTEGER):
                    raise ValueError  # NaN and infinities fail the comparison
            except ValueError:
                raise ConfigError(
                    f"{name}: expected 'tenant=rate:burst' (rate > 0, burst >= 1), got {item!r}"
                ) from None
            limits[tenant.strip()] = limit
        return limits


def _check_token_sources(settings: Settings) -> None:
    """One source of truth for callers' tokens: two would leave it unclear
    which one a token is trusted by (and a forgotten one would still be)."""
    jwt = settings.jwt
    static = [
        name
        for name, value in (("JWT_PUBLIC_KEY", jwt.public_key_pem), ("JWT_SECRET", jwt.secret))
        if value
    ]
    if jwt.jwks_url and static:
        raise ConfigError(
            f"JWT_JWKS_URL cannot be combined with {' or '.join(static)} (or its _FILE form): "
            "set either the JWKS endpoint or the keys themselves"
        )
    if settings.security_hub_url and jwt.configured:
        configured = [*static, *(["JWT_JWKS_URL"] if jwt.jwks_url else [])]
        raise ConfigError(
            f"SECURITY_HUB_URL cannot be combined with {' or '.join(configured)}: with a "
            "Security Hub, tokens are validated by the hub, not with local keys"
        )


def _metrics_tenants(ids: tuple[str, ...]) -> tuple[str, ...]:
    """METRICS_TENANT_LABELS: tenant ids as tokens carry them, each once,
    at most MAX_METRICS_TENANT_LABELS of them, and never "other" (the label
    of every tenant not listed)."""
    if not ids:
        return ()
    # Here, not at the top: auth loads the JWT and crypto libraries, which
    # reading settings without this list has no use for.
    from chat_service.auth import TENANT_ID_PATTERN

    for tenant in ids:
        if not TENANT_ID_PATTERN.fullmatch(tenant):
            raise ConfigError(
                f"METRICS_TENANT_LABELS: {tenant[:40]!r} is not a tenant id (1 to 128 "
                "letters, digits, '.', '_' or '-', starting with a letter or a digit)"
            )
        if tenant == "other":
            raise ConfigError(
                "METRICS_TENANT_LABELS must not list 'other': it labels every tenant not listed"
            )
    unique = tuple(dict.fromkeys(ids))
    if len(unique) > MAX_METRICS_TENANT_LABELS:
        raise ConfigError(
            f"METRICS_TENANT_LABELS lists {len(unique)} tenants, at most "
            f"{MAX_METRICS_TENANT_LABELS}: each is a series of its own per metric"
        )
    return unique


def _check_grpc_target(name: str, target: str) -> None:
    """A gRPC target: `host[:port]`, or one of gRPC's own schemes
    (dns:///host:port, unix:path, ...). An http:// URL would be taken as a
    host name and fail every call (UNAVAILABLE) instead of the start-up."""
    scheme, colon, rest = target.partition(":")
    if colon and scheme in {"dns", "unix", "unix-abstract", "ipv4", "ipv6", "vsock"}:
        if not rest.strip("/"):
            raise ConfigError(f"{name} must name an address after {scheme}:")
        return
    if "/" in target or "://" in target:
        raise ConfigError(
            f"{name} must be a gRPC target (host:port, dns:///host:port or unix:path), "
            "not a URL or a path"
        )
    _check_host(name, target)


def _check_host(name: str, host: str) -> None:
    """`host`, `host:port` or `[v6 address]:port`, port in 1..65535."""
    address, bracket, after = host.rpartition("]") if host.startswith("[") else ("", "", host)
    named, colon, port = after.rpartition(":") if ":" in after else (after, "", "")
    if not (address + bracket + named).strip("[]"):
        raise ConfigError(f"{name} needs a host in every address, got {host[:40]!r}")
    if colon and not (port.isdigit() and 1 <= int(port) <= 65535):
        raise ConfigError(f"{name}: the port must be a number in 1..65535, got {port[:10]!r}")


def _check_range(name: str, number: float, low: float | None, high: float | None) -> None:
    if low is not None and number < low:
        raise ConfigError(f"{name} must be at least {low}, got {number}")
    if high is not None and number > high:
        raise ConfigError(f"{name} must be at most {high}, got {number}")

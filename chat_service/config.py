"""Settings from the environment.

Names follow the seed's `.env` (SERVICE_PORT, MONGODB_URI, REDIS_URL,
MCP_ENGINE_URL, KAFKA_BROKERS, ...); the variables this service adds are
listed in the README. Every value has a default that runs the service on
its embedded parts; a bad value fails start-up with a message naming the
variable.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


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

    @property
    def configured(self) -> bool:
        return bool(self.public_key_pem or self.secret)


@dataclass(frozen=True, slots=True)
class Settings:
    service_name: str = "chat-service"
    host: str = "0.0.0.0"
    port: int = 8001
    log_level: str = "INFO"
    log_format: str = "text"
    data_dir: Path = Path("var")
    sqlite_synchronous: str = "NORMAL"
    mongodb_uri: str = ""
    redis_url: str = ""
    mcp_engine_url: str = ""
    security_hub_url: str = ""
    kafka_brokers: tuple[str, ...] = ()
    kafka_topic_prefix: str = "chatbot.platform"
    max_connections_mongo: int = 100
    max_connections_redis: int = 50
    request_timeout_ms: int = 30_000
    mcp_engine_timeout_ms: int = 8_000
    lock_timeout_ms: int = 10_000
    stream_buffer_size: int = 256
    stream_stall_grace_seconds: float = 5.0
    shutdown_delay_seconds: float = 1.0
    shutdown_grace_seconds: float = 10.0
    rate_limit: RateLimit = RateLimit(rate=100.0, burst=200)
    tenant_rate_limits: Mapping[str, RateLimit] = field(default_factory=dict)
    jwt: JwtSettings = JwtSettings()
    fallback_text: str = "Sorry, I can't answer right now. Please try again in a moment."

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
            log_level=r.choice(
                "LOG_LEVEL", defaults.log_level, {"DEBUG", "INFO", "WARNING", "ERROR"}, upper=True
            ),
            log_format=r.choice("LOG_FORMAT", defaults.log_format, {"text", "json"}),
            data_dir=Path(r.text("DATA_DIR", str(defaults.data_dir))),
            sqlite_synchronous=r.choice(
                "SQLITE_SYNCHRONOUS", defaults.sqlite_synchronous, {"NORMAL", "FULL"}, upper=True
            ),
            mongodb_uri=r.text("MONGODB_URI", ""),
            redis_url=r.text("REDIS_URL", ""),
            mcp_engine_url=r.text("MCP_ENGINE_URL", ""),
            security_hub_url=r.text("SECURITY_HUB_URL", ""),
            kafka_brokers=r.csv("KAFKA_BROKERS"),
            kafka_topic_prefix=r.text("KAFKA_TOPIC_PREFIX", defaults.kafka_topic_prefix),
            max_connections_mongo=r.integer(
                "MAX_CONNECTIONS_MONGO", defaults.max_connections_mongo, low=1
            ),
            max_connections_redis=r.integer(
                "MAX_CONNECTIONS_REDIS", defaults.max_connections_redis, low=1
            ),
            request_timeout_ms=r.integer(
                "REQUEST_TIMEOUT_MS", defaults.request_timeout_ms, low=100
            ),
            mcp_engine_timeout_ms=r.integer(
                "MCP_ENGINE_TIMEOUT_MS", defaults.mcp_engine_timeout_ms, low=1
            ),
            lock_timeout_ms=r.integer("LOCK_TIMEOUT_MS", defaults.lock_timeout_ms, low=1),
            stream_buffer_size=r.integer(
                "STREAM_BUFFER_SIZE", defaults.stream_buffer_size, low=1, high=100_000
            ),
            stream_stall_grace_seconds=r.number(
                "STREAM_STALL_GRACE_SECONDS", defaults.stream_stall_grace_seconds, low=0
            ),
            shutdown_delay_seconds=r.number(
                "SHUTDOWN_DELAY_SECONDS", defaults.shutdown_delay_seconds, low=0
            ),
            shutdown_grace_seconds=r.number(
                "SHUTDOWN_GRACE_SECONDS", defaults.shutdown_grace_seconds, low=0
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
                leeway_seconds=r.number("JWT_LEEWAY_SECONDS", 30.0, low=0),
            ),
            fallback_text=r.text("FALLBACK_MESSAGE", defaults.fallback_text),
        )
        if settings.mcp_engine_timeout_ms > settings.request_timeout_ms:
            raise ConfigError("MCP_ENGINE_TIMEOUT_MS must not exceed REQUEST_TIMEOUT_MS")
        return settings


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

    def integer(
        self, name: str, default: int, *, low: int | None = None, high: int | None = None
    ) -> int:
        value = self._raw(name)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            raise ConfigError(f"{name} must be an integer, got {value!r}") from None
        _check_range(name, number, low, high)
        return number

    def number(self, name: str, default: float, *, low: float | None = None) -> float:
        value = self._raw(name)
        if value is None:
            return default
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"{name} must be a number, got {value!r}") from None
        _check_range(name, number, low, None)
        return number

    def choice(self, name: str, default: str, allowed: set[str], *, upper: bool = False) -> str:
        value = self._raw(name)
        if value is None:
            return default
        value = value.upper() if upper else value.lower()
        if value not in allowed:
            raise ConfigError(f"{name} must be one of {sorted(allowed)}, got {value!r}")
        return value

    def csv(self, name: str) -> tuple[str, ...]:
        value = self._raw(name)
        if value is None:
            return ()
        return tuple(part.strip() for part in value.split(",") if part.strip())

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
                if limit.rate <= 0 or limit.burst < 1:
                    raise ValueError
            except ValueError:
                raise ConfigError(
                    f"{name}: expected 'tenant=rate:burst' (rate > 0, burst >= 1), got {item!r}"
                ) from None
            limits[tenant.strip()] = limit
        return limits


def _check_range(name: str, number: float, low: float | None, high: float | None) -> None:
    if low is not None and number < low:
        raise ConfigError(f"{name} must be at least {low}, got {number}")
    if high is not None and number > high:
        raise ConfigError(f"{name} must be at most {high}, got {number}")

"""Settings from the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from chat_service.config import ConfigError, RateLimit, Settings


def test_defaults_run_on_embedded_parts() -> None:
    settings = Settings.from_env({})

    assert settings.port == 8001
    assert settings.data_dir == Path("var")
    assert not settings.mongodb_uri
    assert not settings.jwt.configured
    assert settings.engine_timeout == 8.0


def test_seed_variables_are_read() -> None:
    settings = Settings.from_env(
        {
            "SERVICE_NAME": "chat",
            "SERVICE_PORT": "9000",
            "LOG_LEVEL": "debug",
            "KAFKA_BROKERS": "k1:9092, k2:9092,,",
            "KAFKA_TOPIC_PREFIX": "acme.platform",
            "MAX_CONNECTIONS_MONGO": "10",
            "REQUEST_TIMEOUT_MS": "5000",
            "MCP_ENGINE_TIMEOUT_MS": "2000",
        }
    )

    assert settings.service_name == "chat"
    assert settings.port == 9000
    assert settings.log_level == "DEBUG"
    assert settings.kafka_brokers == ("k1:9092", "k2:9092")
    assert settings.kafka_topic_prefix == "acme.platform"
    assert settings.max_connections_mongo == 10
    assert settings.engine_timeout == 2.0


def test_tenant_rate_limits() -> None:
    settings = Settings.from_env(
        {
            "RATE_LIMIT_PER_SECOND": "5",
            "RATE_LIMIT_BURST": "7",
            "RATE_LIMIT_TENANTS": "a=1:2, b=0.5:1",
        }
    )

    assert settings.rate_limit_for("a") == RateLimit(1.0, 2)
    assert settings.rate_limit_for("b") == RateLimit(0.5, 1)
    assert settings.rate_limit_for("other") == RateLimit(5.0, 7)


def test_secrets_can_come_from_files(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s" * 40 + "\n")

    settings = Settings.from_env({"JWT_SECRET_FILE": str(secret)})

    assert settings.jwt.secret == "s" * 40
    assert settings.jwt.configured


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"SERVICE_PORT": "eighty"}, "SERVICE_PORT"),
        ({"SERVICE_PORT": "70000"}, "SERVICE_PORT"),
        ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL"),
        ({"MAX_CONNECTIONS_REDIS": "0"}, "MAX_CONNECTIONS_REDIS"),
        ({"RATE_LIMIT_TENANTS": "acme"}, "RATE_LIMIT_TENANTS"),
        ({"RATE_LIMIT_TENANTS": "acme=0:1"}, "RATE_LIMIT_TENANTS"),
        ({"JWT_SECRET": "x", "JWT_SECRET_FILE": "/nope"}, "JWT_SECRET"),
        ({"JWT_PUBLIC_KEY_FILE": "/does/not/exist"}, "JWT_PUBLIC_KEY_FILE"),
        ({"MCP_ENGINE_TIMEOUT_MS": "40000"}, "MCP_ENGINE_TIMEOUT_MS"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], names: str) -> None:
    with pytest.raises(ConfigError, match=names):
        Settings.from_env(env)

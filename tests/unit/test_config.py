"""Settings from the environment."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from chat_service.config import ConfigError, RateLimit, Settings, _Reader


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


# ----------------------------------------------------------- numeric bounds


def _names_read_by(method: str) -> list[str]:
    """Every variable Settings.from_env reads with the reader's `method`
    (so settings added later are covered too)."""
    names: list[str] = []
    original = getattr(_Reader, method)

    def spy(self: _Reader, name: str, *args: Any, **kwargs: Any) -> Any:
        names.append(name)
        return original(self, name, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_Reader, method, spy)
        Settings.from_env({})
    return names


NUMBER_SETTINGS = _names_read_by("number")
INTEGER_SETTINGS = _names_read_by("integer")


def test_the_known_numeric_settings_are_covered() -> None:
    assert {
        "JWT_LEEWAY_SECONDS",
        "RATE_LIMIT_PER_SECOND",
        "SHUTDOWN_GRACE_SECONDS",
        "STREAM_STALL_GRACE_SECONDS",
    } <= set(NUMBER_SETTINGS)
    assert {"REQUEST_TIMEOUT_MS", "LOCK_TIMEOUT_MS", "RATE_LIMIT_BURST"} <= set(INTEGER_SETTINGS)


@pytest.mark.parametrize("name", NUMBER_SETTINGS)
@pytest.mark.parametrize("value", ["nan", "NaN", "-nan", "inf", "-inf", "Infinity", "1e999"])
def test_a_number_setting_refuses_non_finite_values(name: str, value: str) -> None:
    # JWT_LEEWAY_SECONDS=nan made every expired token verify forever.
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})


@pytest.mark.parametrize("name", NUMBER_SETTINGS)
def test_a_number_setting_refuses_negatives_and_absurd_sizes(name: str) -> None:
    for value in ("-1", "1e12"):
        with pytest.raises(ConfigError, match=name):
            Settings.from_env({name: value})


@pytest.mark.parametrize("name", INTEGER_SETTINGS)
def test_an_integer_setting_refuses_negatives_and_absurd_sizes(name: str) -> None:
    for value in ("-1", str(10**400), "nan", "1.5"):
        with pytest.raises(ConfigError, match=name):
            Settings.from_env({name: value})


@pytest.mark.parametrize(
    "name",
    ["RATE_LIMIT_PER_SECOND", "REQUEST_TIMEOUT_MS", "LOCK_TIMEOUT_MS", "MAX_CONNECTIONS_MONGO"],
)
def test_zero_is_refused_where_it_makes_no_sense(name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: "0"})


@pytest.mark.parametrize("spec", ["a=nan:1", "a=inf:1", "a=-inf:1", "a=1e999:1", "a=1:-1"])
def test_tenant_rate_limits_refuse_non_finite_rates(spec: str) -> None:
    with pytest.raises(ConfigError, match="RATE_LIMIT_TENANTS"):
        Settings.from_env({"RATE_LIMIT_TENANTS": spec})


def test_finite_values_in_bounds_are_read() -> None:
    settings = Settings.from_env(
        {
            "JWT_LEEWAY_SECONDS": "0",
            "SHUTDOWN_GRACE_SECONDS": "2.5",
            "RATE_LIMIT_TENANTS": "a=1e3:5",
        }
    )

    assert settings.jwt.leeway_seconds == 0
    assert settings.shutdown_grace_seconds == 2.5
    assert settings.rate_limit_for("a") == RateLimit(1000.0, 5)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("JWT_LEEWAY_SECONDS", "601"),  # a leeway that long only extends token lifetimes
        ("REQUEST_TIMEOUT_MS", "3600001"),
        ("LOCK_TIMEOUT_MS", "3600001"),
        ("SHUTDOWN_GRACE_SECONDS", "3601"),
        ("MAX_CONNECTIONS_MONGO", "10001"),
    ],
)
def test_settings_have_bounds_of_their_own(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})


# ---------------------------------------------------------- new settings


def test_the_engine_channel_can_use_tls_with_its_own_roots(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n...\n")

    plain = Settings.from_env({"MCP_ENGINE_URL": "engine:50051"})
    tls = Settings.from_env({"MCP_ENGINE_TLS": "true", "MCP_ENGINE_CA_FILE": str(ca)})

    assert (plain.mcp_engine_tls, plain.mcp_engine_ca_pem) == (False, "")
    assert tls.mcp_engine_tls
    assert tls.mcp_engine_ca_pem.startswith("-----BEGIN CERTIFICATE-----")


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"MCP_ENGINE_TLS": "maybe"}, "MCP_ENGINE_TLS"),
        ({"MCP_ENGINE_CA": "pem"}, "MCP_ENGINE_TLS"),  # roots without TLS: plaintext by mistake
        ({"MCP_ENGINE_TLS": "1", "MCP_ENGINE_CA_FILE": "/no/such/ca.pem"}, "MCP_ENGINE_CA_FILE"),
        ({"PAGE_TOKEN_SECRET": "short"}, "PAGE_TOKEN_SECRET"),
        ({"PAGE_TOKEN_SECRET_FILE": "/no/such/secret"}, "PAGE_TOKEN_SECRET_FILE"),
        ({"JWT_DEV_KEY": "yes please"}, "JWT_DEV_KEY"),
    ],
)
def test_bad_new_settings_name_the_variable(env: dict[str, str], name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env(env)


def test_the_page_token_secret_can_come_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "page-token-secret"
    secret.write_text("p" * 32 + "\n")

    assert Settings.from_env({}).page_token_secret == ""
    assert Settings.from_env({"PAGE_TOKEN_SECRET_FILE": str(secret)}).page_token_secret == (
        "p" * 32
    )


@pytest.mark.parametrize(
    ("env", "allowed"),
    [
        ({}, True),
        ({"MONGODB_URI": "mongodb://db"}, False),
        ({"REDIS_URL": "redis://cache"}, False),
        ({"REDIS_URL": "redis://cache", "JWT_DEV_KEY": "allow"}, True),
        ({"JWT_DEV_KEY": "refuse"}, False),
        ({"KAFKA_BROKERS": "k:9092", "MCP_ENGINE_URL": "e:1"}, True),
    ],
)
def test_the_development_jwt_key_is_refused_in_a_production_shape(
    env: dict[str, str], allowed: bool
) -> None:
    assert Settings.from_env(env).dev_jwt_key_allowed is allowed

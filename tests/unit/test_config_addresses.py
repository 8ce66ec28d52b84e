"""MONGODB_URI, REDIS_URL and KAFKA_BROKERS are checked at start-up: a typo
is a configuration error naming the variable, not a client library's
traceback (or a service that starts and can never connect)."""

from __future__ import annotations

import pytest

from chat_service.config import ConfigError, Settings


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MONGODB_URI", "mongodb://db/chat"),
        ("MONGODB_URI", "mongodb://user:p%40ss@a:27017,b:27018/chat?replicaSet=rs0"),
        ("MONGODB_URI", "mongodb+srv://cluster0.example.net/chat"),
        ("MONGODB_URI", "mongodb://[::1]:27017/chat"),
        ("REDIS_URL", "redis://cache:6379/0"),
        ("REDIS_URL", "rediss://:secret@cache/0"),
        ("REDIS_URL", "unix:///run/redis.sock"),
        ("KAFKA_BROKERS", "k1:9092, k2:9092,,"),
        ("KAFKA_BROKERS", "kafka"),
        ("KAFKA_BROKERS", "[::1]:9092"),
    ],
)
def test_well_formed_addresses_are_taken_as_they_are(name: str, value: str) -> None:
    settings = Settings.from_env({name: value, "JWT_DEV_KEY": "allow"})
    taken = {
        "MONGODB_URI": settings.mongodb_uri,
        "REDIS_URL": settings.redis_url,
        "KAFKA_BROKERS": ",".join(settings.kafka_brokers),
    }[name]
    assert taken.replace(" ", "").strip(",") == value.replace(" ", "").strip(",")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MONGODB_URI", "http://db:27017/chat"),
        ("MONGODB_URI", "db:27017"),
        ("MONGODB_URI", "mongodb://"),
        ("MONGODB_URI", "mongodb://db:99999/chat"),
        ("MONGODB_URI", "mongodb://a:1,:2/chat"),
        ("REDIS_URL", "cache:6379"),
        ("REDIS_URL", "redis://cache:port/0"),
        ("REDIS_URL", "unix://"),
        ("KAFKA_BROKERS", "kafka:port"),
        ("KAFKA_BROKERS", "k1:9092,:9093"),
    ],
)
def test_malformed_addresses_are_configuration_errors_naming_the_variable(
    name: str, value: str
) -> None:
    with pytest.raises(ConfigError, match=name) as refused:
        Settings.from_env({name: value, "JWT_DEV_KEY": "allow"})
    assert "secret" not in str(refused.value)


def test_a_password_in_a_url_is_never_quoted() -> None:
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({"REDIS_URL": "redis://:hunter2@cache:port/0"})
    assert "hunter2" not in str(refused.value)

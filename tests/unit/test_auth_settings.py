"""The settings of JWKS and Security Hub authentication (config.py)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from chat_service.auth import DEV_KEY_FILENAME, JwtVerifier
from chat_service.bootstrap import choose_parts
from chat_service.config import ConfigError, Settings
from chat_service.hub_auth import HubAuthenticator
from chat_service.wiring import Lifecycle

JWKS = "https://idp.example/.well-known/jwks.json"


def test_defaults() -> None:
    settings = Settings.from_env({})
    assert (settings.security_hub_tls, settings.security_hub_ca_pem) == (False, "")
    assert settings.jwt.jwks_url == ""
    assert settings.jwt.jwks_min_refresh_seconds == 30.0
    assert settings.jwt.jwks_max_age_seconds == 300.0
    assert settings.security_hub_timeout_ms == 2_000
    assert settings.security_hub_cache_seconds == 30.0


def test_a_jwks_url_counts_as_a_configured_key() -> None:
    settings = Settings.from_env(
        {
            "JWT_JWKS_URL": JWKS,
            "JWT_JWKS_MIN_REFRESH_SECONDS": "5",
            "JWT_JWKS_MAX_AGE_SECONDS": "600",
            "REDIS_URL": "redis://cache:6379/0",
        }
    )
    assert settings.jwt.jwks_url == JWKS
    assert (settings.jwt.jwks_min_refresh_seconds, settings.jwt.jwks_max_age_seconds) == (5, 600)
    assert settings.jwt.configured  # no development key wanted, even in a production shape


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"JWT_JWKS_URL": "idp.example/jwks"}, "JWT_JWKS_URL"),
        ({"JWT_JWKS_URL": "file:///etc/jwks.json"}, "JWT_JWKS_URL"),
        ({"JWT_JWKS_URL": "https://:99999/jwks"}, "JWT_JWKS_URL"),
        ({"JWT_JWKS_MIN_REFRESH_SECONDS": "-1"}, "JWT_JWKS_MIN_REFRESH_SECONDS"),
        # 0 would be no rate limit: every made-up kid one more fetch.
        ({"JWT_JWKS_MIN_REFRESH_SECONDS": "0"}, "JWT_JWKS_MIN_REFRESH_SECONDS"),
        ({"JWT_JWKS_MIN_REFRESH_SECONDS": "inf"}, "JWT_JWKS_MIN_REFRESH_SECONDS"),
        ({"SECURITY_HUB_URL": "http://hub:9000"}, "SECURITY_HUB_URL"),
        ({"SECURITY_HUB_URL": "hub:99999"}, "SECURITY_HUB_URL"),
        ({"SECURITY_HUB_URL": ":9000"}, "SECURITY_HUB_URL"),
        ({"SECURITY_HUB_URL": "hub:9000/path"}, "SECURITY_HUB_URL"),
        ({"SECURITY_HUB_TLS": "maybe"}, "SECURITY_HUB_TLS"),
        # Roots without TLS: plaintext by mistake.
        ({"SECURITY_HUB_URL": "hub:9000", "SECURITY_HUB_CA": "pem"}, "SECURITY_HUB_TLS"),
        (
            {"SECURITY_HUB_TLS": "true", "SECURITY_HUB_CA_FILE": "/no/such/ca.pem"},
            "SECURITY_HUB_CA_FILE",
        ),
        ({"JWT_JWKS_MAX_AGE_SECONDS": "nan"}, "JWT_JWKS_MAX_AGE_SECONDS"),
        ({"SECURITY_HUB_TIMEOUT_MS": "0"}, "SECURITY_HUB_TIMEOUT_MS"),
        ({"SECURITY_HUB_CACHE_SECONDS": "3600"}, "SECURITY_HUB_CACHE_SECONDS"),
    ],
)
def test_malformed_values_are_refused_by_name(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        Settings.from_env(env)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"JWT_JWKS_URL": JWKS, "JWT_SECRET": "s" * 40}, ("JWT_JWKS_URL", "JWT_SECRET")),
        (
            {"JWT_JWKS_URL": JWKS, "JWT_PUBLIC_KEY": "-----BEGIN PUBLIC KEY-----"},
            ("JWT_JWKS_URL", "JWT_PUBLIC_KEY"),
        ),
        (
            {"SECURITY_HUB_URL": "hub:9000", "JWT_SECRET": "s" * 40},
            ("SECURITY_HUB_URL", "JWT_SECRET"),
        ),
        (
            {"SECURITY_HUB_URL": "hub:9000", "JWT_JWKS_URL": JWKS},
            ("SECURITY_HUB_URL", "JWT_JWKS_URL"),
        ),
    ],
)
def test_two_sources_of_trust_are_refused_as_ambiguous(
    env: dict[str, str], named: tuple[str, ...]
) -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.from_env(env)
    for name in named:
        assert name in str(raised.value)


def test_a_security_hub_alone_is_enough() -> None:
    settings = Settings.from_env({"SECURITY_HUB_URL": "hub:9000", "MONGODB_URI": "mongodb://db"})
    assert settings.security_hub_url == "hub:9000"


@pytest.mark.parametrize(
    "target",
    ["hub:9000", "hub", "10.0.0.7:9000", "[::1]:9000", "dns:///hub.internal:9000", "unix:/run/hub"],
)
def test_security_hub_targets_in_grpc_forms_are_taken(target: str) -> None:
    assert Settings.from_env({"SECURITY_HUB_URL": target}).security_hub_url == target


async def _parts_verifier(tmp_path: Path, env: dict[str, str]) -> object:
    settings = Settings.from_env(
        {
            "DATA_DIR": str(tmp_path),
            # A production shape (nothing listens: Redis connects lazily),
            # where the development key would be refused.
            "REDIS_URL": "redis://127.0.0.1:9/0",
            "CHANNEL_SECRETS_KEY": "k1:" + base64.b64encode(bytes(32)).decode(),
            **env,
        }
    )
    life = Lifecycle()
    try:
        return (await choose_parts(settings, life)).verifier
    finally:
        for close in reversed(life.closers):
            await close()


async def test_bootstrap_chooses_the_security_hub(tmp_path: Path) -> None:
    verifier = await _parts_verifier(tmp_path, {"SECURITY_HUB_URL": "127.0.0.1:9"})
    assert isinstance(verifier, HubAuthenticator)
    assert not (tmp_path / DEV_KEY_FILENAME).exists()


async def test_bootstrap_refuses_a_hub_ca_file_without_a_certificate(tmp_path: Path) -> None:
    ca = tmp_path / "hub-ca.pem"
    ca.write_text("not a certificate")
    with pytest.raises(ConfigError, match="SECURITY_HUB_CA_FILE"):
        await _parts_verifier(
            tmp_path,
            {
                "SECURITY_HUB_URL": "127.0.0.1:9",
                "SECURITY_HUB_TLS": "true",
                "SECURITY_HUB_CA_FILE": str(ca),
            },
        )


async def test_bootstrap_chooses_the_jwks(tmp_path: Path) -> None:
    verifier = await _parts_verifier(
        tmp_path, {"JWT_JWKS_URL": "http://127.0.0.1:9/jwks.json", "JWT_ALGORITHMS": "ES256"}
    )
    assert isinstance(verifier, JwtVerifier)
    assert verifier.algorithms == {"ES256"}
    assert not (tmp_path / DEV_KEY_FILENAME).exists()


async def test_bootstrap_refuses_hmac_with_a_jwks(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="HS256"):
        await _parts_verifier(
            tmp_path, {"JWT_JWKS_URL": "http://127.0.0.1:9/jwks.json", "JWT_ALGORITHMS": "HS256"}
        )

"""`python -m chat_service token`: dev tokens only where the server takes them."""

from __future__ import annotations

from pathlib import Path

import pytest

from chat_service.__main__ import main
from chat_service.auth import load_or_create_dev_key

PRODUCTION_PARTS = ("MONGODB_URI", "REDIS_URL", "JWT_PUBLIC_KEY", "JWT_SECRET", "JWT_DEV_KEY")


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for name in PRODUCTION_PARTS:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(f"{name}_FILE", raising=False)
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    return monkeypatch


def test_the_token_command_mints_a_dev_token(
    env: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["token", "--tenant", "acme"]) == 0

    token = capsys.readouterr().out.strip()
    assert load_or_create_dev_key(tmp_path).verifier().verify(token).tenant_id == "acme"


def test_the_token_command_refuses_in_a_production_shape(
    env: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env.setenv("REDIS_URL", "redis://cache:6379/0")

    assert main(["token", "--tenant", "acme"]) == 2

    captured = capsys.readouterr()
    assert captured.out == ""
    assert "JWT_DEV_KEY=allow" in captured.err
    assert not list(tmp_path.iterdir())  # no key made


def test_the_token_command_mints_when_the_dev_key_is_allowed(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    env.setenv("MONGODB_URI", "mongodb://db/chat")
    env.setenv("JWT_DEV_KEY", "allow")

    assert main(["token", "--tenant", "acme"]) == 0
    assert capsys.readouterr().out.count(".") == 2


def test_a_bad_setting_is_a_configuration_error(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    env.setenv("JWT_LEEWAY_SECONDS", "nan")

    assert main(["token", "--tenant", "acme"]) == 2
    assert "JWT_LEEWAY_SECONDS" in capsys.readouterr().err

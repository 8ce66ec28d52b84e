"""The channel secrets box (adapters/secrets/aes_gcm.py): AES-256-GCM with
key ids, its settings (CHANNEL_SECRETS_KEY[_FILE]) and its development key."""

from __future__ import annotations

import base64
import logging
import os
import stat
from pathlib import Path

import pytest

from adapters.secrets import AesGcmSecretBox
from chat_service.bootstrap import channel_secret_box
from chat_service.config import ConfigError, Settings
from chat_service.key_files import CHANNEL_SECRETS_KEY_FILENAME
from chat_service.ports import SecretBox, SecretUnreadable

KEY_1 = bytes(range(32))
KEY_2 = bytes(range(100, 132))
SECRET = "EAAG-app-secret-0123456789abcdef"
CONTEXT = "tenant-a/conn-1/app_secret"


def _b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def _box(*keys: tuple[str, bytes]) -> AesGcmSecretBox:
    return AesGcmSecretBox(list(keys) or [("k1", KEY_1)])


def _tampered(sealed: str) -> str:
    head, _, data = sealed.rpartition(".")
    raw = bytearray(base64.urlsafe_b64decode(data + "=" * (-len(data) % 4)))
    raw[len(raw) // 2] ^= 0x01
    return f"{head}.{base64.urlsafe_b64encode(bytes(raw)).rstrip(b'=').decode()}"


def test_a_sealed_secret_opens_with_its_context() -> None:
    box: SecretBox = _box()

    sealed = box.seal(SECRET, context=CONTEXT)

    assert sealed.startswith("v1.k1.")
    assert SECRET not in sealed
    assert box.open(sealed, context=CONTEXT) == SECRET
    assert box.open(box.seal("", context=CONTEXT), context=CONTEXT) == ""
    assert box.open(box.seal("é ✓ 🔑", context="c"), context="c") == "é ✓ 🔑"


def test_every_seal_takes_a_fresh_nonce() -> None:
    box = _box()

    first, second = box.seal(SECRET, context=CONTEXT), box.seal(SECRET, context=CONTEXT)

    assert first != second
    assert first.split(".")[2][:16] != second.split(".")[2][:16]  # the nonces


def test_rotation_seals_with_the_new_key_and_still_opens_old_records() -> None:
    old_box = _box(("k1", KEY_1))
    old_record = old_box.seal(SECRET, context=CONTEXT)
    rotated = _box(("k2", KEY_2), ("k1", KEY_1))

    new_record = rotated.seal(SECRET, context=CONTEXT)

    assert rotated.open(old_record, context=CONTEXT) == SECRET
    assert new_record.startswith("v1.k2.")
    assert rotated.open(new_record, context=CONTEXT) == SECRET
    with pytest.raises(SecretUnreadable, match="'k2'"):
        old_box.open(new_record, context=CONTEXT)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_tampered, "altered, or sealed for another record"),
        (lambda sealed: sealed.replace("v1.k1.", "v1.k9.", 1), "'k9', which the keyring"),
        (lambda sealed: sealed.replace("v1.k1.", "v1.k2.", 1), "altered"),  # relabelled
        (lambda sealed: sealed.replace("v1.", "v2.", 1), "not a sealed secret"),
        (lambda sealed: sealed[:20], "cut short"),
        (lambda sealed: "plain text", "not a sealed secret"),
        (lambda sealed: "v1.k1.", "not a sealed secret"),
    ],
)
def test_a_changed_value_does_not_open(change: object, message: str) -> None:
    box = _box(("k1", KEY_1), ("k2", KEY_2))
    sealed = box.seal(SECRET, context=CONTEXT)

    with pytest.raises(SecretUnreadable, match=message) as refused:
        box.open(change(sealed), context=CONTEXT)  # type: ignore[operator]

    assert SECRET not in str(refused.value)
    assert refused.value.__cause__ is None  # no cryptography exception chained


def test_a_value_moved_to_another_record_does_not_open() -> None:
    box = _box()
    sealed = box.seal(SECRET, context=CONTEXT)

    for context in ("tenant-b/conn-1/app_secret", "tenant-a/conn-1/access_token", ""):
        with pytest.raises(SecretUnreadable, match="another record"):
            box.open(sealed, context=context)


def test_fingerprints_are_short_stable_and_keyed() -> None:
    box = _box()

    fingerprint = box.fingerprint(SECRET)

    assert fingerprint == box.fingerprint(SECRET)
    assert fingerprint == _box().fingerprint(SECRET)  # another process, same key
    assert fingerprint.startswith("hmac-sha256:")
    assert len(fingerprint) == len("hmac-sha256:") + 8
    assert SECRET not in fingerprint
    assert SECRET[:8] not in fingerprint
    assert box.fingerprint("another secret") != fingerprint
    # Keyed: without the key a guess cannot be checked against it.
    assert _box(("k2", KEY_2)).fingerprint(SECRET) != fingerprint


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ([], "at least one key"),
        ([("k1", KEY_1[:16])], "'k1' must be 32 bytes"),
        ([("bad.kid", KEY_1)], "key id must be"),
        ([("k1", KEY_1), ("k1", KEY_2)], "appears twice"),
    ],
)
def test_unusable_keys_are_refused(keys: list[tuple[str, bytes]], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AesGcmSecretBox(keys)


# ------------------------------------------------------------------ settings


def test_keys_are_read_first_current() -> None:
    settings = Settings.from_env(
        {"CHANNEL_SECRETS_KEY": f"k2:{_b64(KEY_2)}, k1:{base64.urlsafe_b64encode(KEY_1).decode()}"}
    )

    assert [(key.kid, key.key) for key in settings.channel_secrets_keys] == [
        ("k2", KEY_2),
        ("k1", KEY_1),
    ]
    assert _b64(KEY_2) not in repr(settings)
    assert Settings.from_env({}).channel_secrets_keys == ()


def test_keys_can_come_from_a_file(tmp_path: Path) -> None:
    file = tmp_path / "keys"
    file.write_text(f"k1:{_b64(KEY_1).rstrip('=')}\n")

    settings = Settings.from_env({"CHANNEL_SECRETS_KEY_FILE": str(file)})

    assert [(key.kid, key.key) for key in settings.channel_secrets_keys] == [("k1", KEY_1)]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (_b64(KEY_1), "entry 1 must be kid:base64key"),  # the kid forgotten
        (f"k1:{_b64(KEY_1[:31])}", "the key of 'k1' must be 32 bytes"),
        (f"k1:{_b64(KEY_1)}x", "the key of 'k1' must be 32 bytes"),
        (f"k1:{_b64(KEY_1)},k.2:{_b64(KEY_2)}", "entry 2 must be kid:base64key"),
        (f"{'k' * 33}:{_b64(KEY_1)}", "entry 1 must be"),
        (f"k1:{_b64(KEY_1)},k1:{_b64(KEY_2)}", "'k1' appears twice"),
        (",", "expected kid:base64key"),
    ],
)
@pytest.mark.parametrize("from_file", [False, True])
def test_bad_keys_fail_start_up_naming_the_variable(
    tmp_path: Path, value: str, message: str, from_file: bool
) -> None:
    if from_file:
        file = tmp_path / "keys"
        file.write_text(value)
        env, variable = {"CHANNEL_SECRETS_KEY_FILE": str(file)}, "CHANNEL_SECRETS_KEY_FILE"
    else:
        env, variable = {"CHANNEL_SECRETS_KEY": value}, "CHANNEL_SECRETS_KEY"

    with pytest.raises(ConfigError, match=message) as refused:
        Settings.from_env(env)

    assert str(refused.value).startswith(f"{variable}: ")
    for key in (KEY_1, KEY_2, KEY_1[:31]):
        assert _b64(key)[:12] not in str(refused.value)


# ----------------------------------------------------------------- bootstrap


def test_the_box_is_built_from_the_configured_keys(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {
            "CHANNEL_SECRETS_KEY": f"k2:{_b64(KEY_2)},k1:{_b64(KEY_1)}",
            "DATA_DIR": str(tmp_path),
            "MONGODB_URI": "mongodb://db:27017",  # a production shape, with a key: fine
        }
    )
    old_record = _box(("k1", KEY_1)).seal(SECRET, context=CONTEXT)

    box = channel_secret_box(settings)

    assert box.open(old_record, context=CONTEXT) == SECRET
    assert box.seal(SECRET, context=CONTEXT).startswith("v1.k2.")
    assert not (tmp_path / CHANNEL_SECRETS_KEY_FILENAME).exists()


def test_unset_the_key_is_made_once_in_data_dir(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings.from_env({"DATA_DIR": str(tmp_path / "data")})
    path = tmp_path / "data" / CHANNEL_SECRETS_KEY_FILENAME

    with caplog.at_level(logging.INFO):
        sealed = channel_secret_box(settings).seal(SECRET, context=CONTEXT)
    made = path.read_text()

    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    kid = made.split(":")[0]
    assert sealed.startswith(f"v1.{kid}.")
    assert kid.startswith("dev-")
    # The file is in CHANNEL_SECRETS_KEY's form, and is kept: a restart reads it.
    assert Settings.from_env({"CHANNEL_SECRETS_KEY_FILE": str(path)}).channel_secrets_keys
    assert channel_secret_box(settings).open(sealed, context=CONTEXT) == SECRET
    assert path.read_text() == made
    assert made.split(":")[1].strip() not in caplog.text


def test_a_production_shape_refuses_the_self_made_key(tmp_path: Path) -> None:
    for production in ({"MONGODB_URI": "mongodb://db:27017"}, {"REDIS_URL": "redis://r:6379"}):
        settings = Settings.from_env({"DATA_DIR": str(tmp_path), **production})

        with pytest.raises(ConfigError, match="CHANNEL_SECRETS_KEY"):
            channel_secret_box(settings)

    assert not (tmp_path / CHANNEL_SECRETS_KEY_FILENAME).exists()


def test_a_damaged_key_file_is_refused_naming_it(tmp_path: Path) -> None:
    (tmp_path / CHANNEL_SECRETS_KEY_FILENAME).write_text("dev-1:not-a-key")

    with pytest.raises(ConfigError, match=CHANNEL_SECRETS_KEY_FILENAME):
        channel_secret_box(Settings.from_env({"DATA_DIR": str(tmp_path)}))

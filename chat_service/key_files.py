"""Keys the embedded default makes for itself and keeps in DATA_DIR.

The development JWT key and the page token key: made on first start, then
reused, so that restarts (and processes sharing DATA_DIR) agree on them.
Blocking file I/O is deliberate: it runs once, before serving.
"""

from __future__ import annotations

import base64
import logging
import os
import secrets
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)

PAGE_TOKEN_KEY_FILENAME = "page-token-hmac.key"  # noqa: S105 (a file name)
PAGE_TOKEN_KEY_BYTES = 32
CHANNEL_SECRETS_KEY_BYTES = 32  # AES-256


def load_or_create(path: Path, make: Callable[[], bytes], *, what: str) -> bytes:
    """The contents of `path`, written first (mode 0600) with `make()` if absent.

    Creation is atomic: the key is written to a private temporary file and
    hard-linked into place, which fails if the file already exists, so that
    processes starting together all end up with the first one's key and
    none ever reads a half-written file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        content = path.read_bytes()
    except FileNotFoundError:
        return _create(path, make(), what)
    if path.stat().st_mode & 0o077:
        logger.warning("%s is readable by other users; it should be mode 0600", path)
    return content


def load_or_create_page_token_key(data_dir: Path) -> bytes:
    """`data_dir/page-token-hmac.key`: 32 random bytes, hex-encoded."""
    path = data_dir / PAGE_TOKEN_KEY_FILENAME
    text = load_or_create(
        path,
        lambda: secrets.token_hex(PAGE_TOKEN_KEY_BYTES).encode(),
        what="page token key",
    )
    try:
        key = bytes.fromhex(text.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        key = b""
    if len(key) < PAGE_TOKEN_KEY_BYTES:
        raise ValueError(
            f"{path} is not a page token key ({PAGE_TOKEN_KEY_BYTES} hex-encoded bytes); "
            "delete it to have a new one made (issued page tokens then become invalid)"
        )
    return key


CHANNEL_SECRETS_KEY_FILENAME = "channel-secrets.key"


def load_or_create_channel_secrets_key(data_dir: Path) -> tuple[Path, str]:
    """`data_dir/channel-secrets.key` and its text, in CHANNEL_SECRETS_KEY's
    form (`kid:base64key`, so the file can later be given as
    CHANNEL_SECRETS_KEY_FILE). The kid is random: a key made anew after the
    file was lost names itself, and old records say "unknown key id" rather
    than look tampered with."""
    path = data_dir / CHANNEL_SECRETS_KEY_FILENAME
    text = load_or_create(
        path,
        lambda: (
            f"dev-{secrets.token_hex(4)}:"
            f"{base64.b64encode(secrets.token_bytes(CHANNEL_SECRETS_KEY_BYTES)).decode()}\n"
        ).encode(),
        what="channel secrets key",
    )
    return path, text.decode("utf-8", errors="replace").strip()


def _create(path: Path, content: bytes, what: str) -> bytes:
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as file:
            os.fchmod(file.fileno(), 0o600)  # exactly 0600, whatever the umask
            file.write(content)
            file.flush()
            os.fsync(file.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            return path.read_bytes()  # another process created it first
        logger.info("created the %s %s", what, path)
        return content
    finally:
        temporary.unlink(missing_ok=True)

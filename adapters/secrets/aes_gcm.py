"""ports.SecretBox with AES-256-GCM and a keyring of key ids.

A sealed value is `v1.<kid>.<base64url(nonce | ciphertext | tag)>`: a fresh
96-bit random nonce per seal, and as associated data the version, the kid
and the caller's context, so a value moved to another record (or relabelled
with another kid) does not open. The first key seals; every key opens what
it sealed, which is how keys rotate: put a new key first, keep the old ones
until the records they sealed have been re-sealed.

Random nonces are safe for 2**32 seals per key (NIST SP 800-38D, 8.3): far
more credentials than a deployment stores between rotations.

Fingerprints are `hmac-sha256:` and the first 8 hex digits of an HMAC-SHA256
of the secret, keyed by a key derived (HKDF) from the current key: a plain
hash would let anyone holding a fingerprint test guesses of a low-entropy
secret (a verify token) offline. The fingerprint of a secret therefore
changes when the current key does; store it with the sealed value.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from chat_service.ports import SecretUnreadable

VERSION = "v1"
KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
FINGERPRINT_PREFIX = "hmac-sha256:"
FINGERPRINT_HEX_DIGITS = 8
_KID = re.compile(r"[A-Za-z0-9_-]{1,32}")
_FINGERPRINT_INFO = b"chat-service channel secret fingerprint v1"


class AesGcmSecretBox:
    def __init__(self, keys: Sequence[tuple[str, bytes]]) -> None:
        """`keys`: (kid, 32-byte key) pairs, the first current. ValueError
        (naming the kid, never the key) if one is unusable."""
        if not keys:
            raise ValueError("a secret box needs at least one key")
        self._ciphers: dict[str, AESGCM] = {}
        for kid, key in keys:
            if not _KID.fullmatch(kid):
                raise ValueError("a key id must be 1 to 32 of A-Z a-z 0-9 _ -")
            if len(key) != KEY_BYTES:
                raise ValueError(f"the key {kid!r} must be {KEY_BYTES} bytes")
            if kid in self._ciphers:
                raise ValueError(f"the key id {kid!r} appears twice")
            self._ciphers[kid] = AESGCM(key)
        self._current = keys[0][0]
        self._fingerprint_key = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=_FINGERPRINT_INFO
        ).derive(keys[0][1])

    @property
    def current_kid(self) -> str:
        return self._current

    def seal(self, plaintext: str, *, context: str) -> str:
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._ciphers[self._current].encrypt(
            nonce, plaintext.encode(), _associated_data(self._current, context)
        )
        data = base64.urlsafe_b64encode(nonce + sealed).rstrip(b"=").decode("ascii")
        return f"{VERSION}.{self._current}.{data}"

    def open(self, sealed: str, *, context: str) -> str:
        version, _, rest = sealed.partition(".")
        kid, _, data = rest.partition(".")
        if version != VERSION or not _KID.fullmatch(kid) or not data:
            raise SecretUnreadable(f"not a sealed secret ({VERSION}.<kid>.<data> expected)")
        cipher = self._ciphers.get(kid)
        if cipher is None:
            raise SecretUnreadable(
                f"the secret was sealed with key id {kid!r}, which the keyring no longer "
                "holds (put that key back in CHANNEL_SECRETS_KEY to read it)"
            )
        try:
            raw = base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) < NONCE_BYTES + TAG_BYTES:
            raise SecretUnreadable("not a sealed secret (its data is cut short or not base64url)")
        try:
            plaintext = cipher.decrypt(
                raw[:NONCE_BYTES], raw[NONCE_BYTES:], _associated_data(kid, context)
            )
        except InvalidTag:
            raise SecretUnreadable(
                f"the secret sealed with key id {kid!r} does not open for this context: "
                "it was altered, or sealed for another record"
            ) from None
        return plaintext.decode()

    def fingerprint(self, plaintext: str) -> str:
        digest = hmac.new(self._fingerprint_key, plaintext.encode(), hashlib.sha256).hexdigest()
        return FINGERPRINT_PREFIX + digest[:FINGERPRINT_HEX_DIGITS]


def _associated_data(kid: str, context: str) -> bytes:
    # NUL cannot occur in a kid: the fields cannot run into each other.
    return f"{VERSION}\0{kid}\0".encode() + context.encode()

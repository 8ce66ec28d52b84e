"""Opaque, signed page and resume tokens (AIP-158).

A token holds a position (the key after the last item of a page, or an
event's outbox position) and a digest of the request it belongs to: its
kind, the caller's tenant and the request's other fields. It is signed with
HMAC-SHA256 under the server's key (PAGE_TOKEN_SECRET, shared by every
process of a deployment), so a caller can neither forge a position nor
reuse a token with other parameters or as another tenant: a token is only
ever handed back as it was issued.

Decoding refuses anything longer than MAX_TOKEN_LENGTH before looking at
it, checks the signature before parsing, and answers every malformed token
INVALID_ARGUMENT naming the field. Positions are keys of an index (never
offsets), so pages stay stable while data is added.

Format: `base64url(json body) "." base64url(mac)`, version 2. Unsigned
version-1 tokens of earlier releases are refused (INVALID_ARGUMENT): a
client starts its listing again.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Mapping
from typing import TypeGuard

from chat_service.domain.errors import InvalidArgument
from chat_service.domain.model import JsonValue

# An HMAC key shorter than its hash is weaker than the hash (RFC 2104, 3).
MIN_KEY_BYTES = 32
# Issued tokens are about 200 characters; the bound leaves room, and is
# checked before anything is decoded.
MAX_TOKEN_LENGTH = 1024

_VERSION = 2
_MAC_BYTES = 32
_TOKEN = re.compile(r"([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)")
_WATCH = "watch"
_MAX_POSITION = 2**63  # the stores' integer range


def query_digest(*parts: object) -> str:
    """A digest of what a token is bound to (its kind, the tenant, the
    request's other fields); equal parts give equal digests in every process."""
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:32]


class PageTokens:
    """Issues and checks the tokens the service hands to callers."""

    def __init__(self, key: bytes) -> None:
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(f"the page token key must be at least {MIN_KEY_BYTES} bytes long")
        self._key = key

    @classmethod
    def ephemeral(cls) -> PageTokens:
        """A random key: tokens valid only in this object's life (tests, tools)."""
        return cls(secrets.token_bytes(MIN_KEY_BYTES))

    def encode(self, position: Mapping[str, JsonValue], *, digest: str) -> str:
        body = json.dumps(
            {"v": _VERSION, "q": digest, "p": position}, separators=(",", ":")
        ).encode()
        return f"{_b64encode(body)}.{_b64encode(self._mac(body))}"

    def decode(
        self, token: str, *, digest: str, field: str = "page_token"
    ) -> Mapping[str, JsonValue]:
        """The position in `token`, if this service issued it for `digest`;
        else InvalidArgument naming `field`."""
        not_issued = InvalidArgument.of(field, "is not a token this service issued")
        if len(token) > MAX_TOKEN_LENGTH:
            raise InvalidArgument.of(
                field, f"is longer than any token this service issues ({MAX_TOKEN_LENGTH} max)"
            )
        match = _TOKEN.fullmatch(token)
        if match is None:
            raise not_issued
        try:
            body = _b64decode(match[1])
            mac = _b64decode(match[2])
        except ValueError:
            raise not_issued from None
        if not hmac.compare_digest(mac, self._mac(body)):
            raise not_issued
        try:
            # Signed by this service, so well-formed; checked all the same.
            document = json.loads(body)
        except (ValueError, RecursionError):
            raise not_issued from None
        if not isinstance(document, dict) or document.get("v") != _VERSION:
            raise not_issued
        position = document.get("p")
        if not isinstance(position, dict):
            raise not_issued
        if document.get("q") != digest:
            raise InvalidArgument.of(
                field,
                "was issued for another request (other parameters or caller); "
                "repeat that request's parameters unchanged",
            )
        return position

    def resume_token(self, tenant_id: str, position: int) -> str:
        """WatchConversations' token to resume after outbox `position`."""
        return self.encode({"p": position}, digest=query_digest(_WATCH, tenant_id))

    def resume_position(self, tenant_id: str, token: str, *, field: str = "resume_token") -> int:
        position = self.decode(token, digest=query_digest(_WATCH, tenant_id), field=field).get("p")
        if not is_position(position):
            raise InvalidArgument.of(field, "is not a token this service issued")
        return position

    def _mac(self, body: bytes) -> bytes:
        return hmac.new(self._key, body, hashlib.sha256).digest()[:_MAC_BYTES]


def is_position(value: object) -> TypeGuard[int]:
    """An integer position the stores can take."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < _MAX_POSITION


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _b64decode(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as error:
        raise ValueError("not base64url") from error

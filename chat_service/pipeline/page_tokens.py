"""Opaque page tokens (AIP-158).

A token holds the position after the last item of a page plus a digest of
the request's other fields, so a token reused with different filters is
refused instead of silently returning a wrong page. Positions are keys of
an index (never offsets), so pages stay stable while data is added. The
tenant is not in the token: every query is scoped by the caller's tenant,
so a forged token can only move within the caller's own data.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping

from chat_service.domain.errors import InvalidArgument
from chat_service.domain.model import JsonValue

_VERSION = 1


def query_digest(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def encode_token(position: Mapping[str, JsonValue], *, digest: str) -> str:
    body = json.dumps({"v": _VERSION, "q": digest, "p": position}, separators=(",", ":"))
    return base64.urlsafe_b64encode(body.encode()).decode().rstrip("=")


def decode_token(token: str, *, digest: str, field: str = "page_token") -> Mapping[str, JsonValue]:
    try:
        padded = token + "=" * (-len(token) % 4)
        body = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        if not isinstance(body, dict) or body.get("v") != _VERSION:
            raise ValueError("unknown token version")
        position = body["p"]
        if not isinstance(position, dict):
            raise ValueError("bad position")
    except (ValueError, KeyError, UnicodeError, TypeError):
        raise InvalidArgument.of(field, "is not a page token this service issued") from None
    if body.get("q") != digest:
        raise InvalidArgument.of(
            field, "was issued for a request with other parameters; repeat them unchanged"
        )
    return position

"""The fingerprint of a request: what it asks for, to tell a retry from a reuse
of its message_id (AIP-155)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from enum import Enum
from functools import cache
from typing import TYPE_CHECKING

from chat_service.domain.model import InboundMessage
from chat_service.domain.serialization import declared_defaults

if TYPE_CHECKING:
    from _typeshed import DataclassInstance


def request_fingerprint(msg: InboundMessage) -> str:
    """A digest of what a request asks for, to tell a retry from a reuse.

    SHA-256 of a canonical JSON of every field but message_id and tenant_id
    (the key the fingerprint is stored under). Fields at their declared
    default are left out, so that adding a defaulted field to the model
    later does not change the fingerprint of requests that do not use it;
    timestamps count by their exact value, None stays None. Stored
    fingerprints are compared with new ones: the digest of a request must
    never change (tests/unit/test_fingerprint.py pins it).
    """
    document = _canonical_fields(msg)
    del document["message_id"], document["tenant_id"]  # never at a default: both required
    encoded = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(encoded.encode("utf-8")).hexdigest()


# Returned as they are: what JSON takes without a conversion.
_PLAIN = frozenset({str, int, float, bool, type(None)})


def _canonical(value: object) -> object:
    """A JSON-able form of a domain value, fields at their default left out."""
    kind = type(value)
    if kind in _PLAIN:
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _canonical_fields(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(key): _canonical(item) for key, item in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return [_canonical(item) for item in value]
    return value


_NO_DEFAULT = object()


@cache
def _field_defaults(cls: type[DataclassInstance]) -> tuple[tuple[str, object], ...]:
    """Each field of `cls` with its declared default (_NO_DEFAULT: none)."""
    defaults = declared_defaults(cls)
    return tuple(
        (field.name, defaults.get(field.name, _NO_DEFAULT)) for field in dataclasses.fields(cls)
    )


def _canonical_fields(obj: DataclassInstance) -> dict[str, object]:
    document: dict[str, object] = {}
    for name, default in _field_defaults(type(obj)):
        value = getattr(obj, name)
        if default is _NO_DEFAULT or value != default:
            document[name] = _canonical(value)
    return document

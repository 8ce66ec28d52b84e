"""The fingerprint of a request: what it asks for, to tell a retry from a reuse
of its message_id (AIP-155)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from enum import Enum
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
    timestamps count by their exact value, None stays None.
    """
    document = {
        name: value
        for name, value in _canonical_fields(msg).items()
        if name not in ("message_id", "tenant_id")
    }
    encoded = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(encoded.encode("utf-8")).hexdigest()


def _canonical(value: object) -> object:
    """A JSON-able form of a domain value, fields at their default left out."""
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


def _canonical_fields(obj: DataclassInstance) -> dict[str, object]:
    defaults = declared_defaults(type(obj))
    document: dict[str, object] = {}
    for field in dataclasses.fields(obj):
        value = getattr(obj, field.name)
        if field.name not in defaults or value != defaults[field.name]:
            document[field.name] = _canonical(value)
    return document

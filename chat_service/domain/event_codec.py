"""Conversation events and live events <-> their documents.

Domain events are stored in the outbox and published from it, so their
document is a stored shape like any other (serialization's). Live events
are never stored: their documents only cross the live bus (Redis pub/sub)
between processes, tagged with a `kind` to dispatch on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from chat_service.domain.events import DomainEvent
from chat_service.domain.live import (
    DeliveryChanged,
    LiveEvent,
    MessageStored,
    ReadThrough,
    StatusChanged,
    TypingChanged,
)
from chat_service.domain.serialization import (
    Document,
    StoredShapeError,
    from_document,
    to_document,
)


def event_to_dict(event: DomainEvent) -> Document:
    return to_document(event)


def event_from_dict(data: Any) -> DomainEvent:
    return from_document(DomainEvent, data)


_LIVE_KINDS: dict[str, type[LiveEvent]] = {
    "message_stored": MessageStored,
    "delivery_changed": DeliveryChanged,
    "status_changed": StatusChanged,
    "typing_changed": TypingChanged,
    "read_through": ReadThrough,
}
_KIND_OF = {cls: kind for kind, cls in _LIVE_KINDS.items()}


def live_event_to_dict(event: LiveEvent) -> Document:
    """A live event with its `kind`, the key its decoder dispatches on."""
    kind = _KIND_OF.get(type(event))
    if kind is None:
        raise TypeError(f"not a live event: {event!r}")
    return {"kind": kind, **to_document(event)}


def live_event_from_dict(data: Mapping[str, Any]) -> LiveEvent:
    kind = data.get("kind") if isinstance(data, Mapping) else None
    cls = _LIVE_KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise StoredShapeError(f"unknown live event kind {kind!r}")
    return from_document(cls, data)

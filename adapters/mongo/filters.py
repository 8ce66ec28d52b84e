"""Query filter helpers."""

from __future__ import annotations

from chat_service.domain.serialization import Document


def all_of(*filters: Document) -> Document:
    """The conjunction of filters (empty ones left out), spelled as an
    explicit $and.

    To MongoDB, `{a: 1, $or: [...]}` and `{$and: [{a: 1}, {$or: [...]}]}`
    mean the same. nx-27017, the test server, drops the other conditions of
    a filter that also holds an $or, so every $or is kept inside an $and.
    """
    return {"$and": [part for part in filters if part]}

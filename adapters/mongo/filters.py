"""Query filter helpers: conjunctions, and literal text inside a $regex."""

from __future__ import annotations

import re

from chat_service.domain.serialization import Document


def all_of(*filters: Document) -> Document:
    """The conjunction of filters (empty ones left out), spelled as an
    explicit $and.

    To MongoDB, `{a: 1, $or: [...]}` and `{$and: [{a: 1}, {$or: [...]}]}`
    mean the same. nx-27017, the test server, drops the other conditions of
    a filter that also holds an $or, so every $or is kept inside an $and.
    """
    return {"$and": [part for part in filters if part]}


def literal_pattern(text: str) -> str:
    """A $regex pattern matching `text` as a plain substring.

    re.escape puts a backslash before every character with a meaning in a
    pattern, which MongoDB's PCRE and nx-27017's Python `re` alike read as
    the character itself. NUL, which it leaves alone, becomes the escape
    `\\x00`: MongoDB refuses a pattern holding the byte itself ("Regular
    expression cannot contain an embedded null byte"), while the escape
    means the same character to both engines.
    """
    return re.escape(text).replace("\x00", "\\x00")

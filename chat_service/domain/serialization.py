"""The stored shape of domain objects, and the helpers its codecs are built of.

Every store keeps domain objects as the same JSON-able dicts, written and
read by pure functions (no I/O, no store specifics): content_codec for what
a message carries, conversation_codec for conversations, messages and what
is stored with them, event_codec for outbox and live events. This module
holds the conventions they share, so that a document reads the same in
SQLite's JSON columns, in MongoDB and in a log line:

- enums are kept as their values, datetimes as ISO-8601 UTC strings with
  microseconds (`2026-11-25T08:00:00.123456Z`);
- encoding leaves out every field that still has its declared default, so
  stored documents stay small; decoding gives absent keys that default
  again, which also lets documents written before a field existed load
  unchanged;
- `x_from_dict(x_to_dict(obj)) == obj` for every codec.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from enum import StrEnum
from functools import cache
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

# A JSON object as the codecs produce and accept it. Values are typed Any
# because each decoder checks the shape of what it reads by converting it.
Document: TypeAlias = dict[str, Any]

_E = TypeVar("_E", bound=StrEnum)
_T = TypeVar("_T")

# ------------------------------------------------------------------ datetimes


def format_datetime(value: datetime) -> str:
    """`2026-11-25T08:00:00.123456Z`; the value must be timezone-aware."""
    if value.utcoffset() is None:
        raise ValueError(f"naive datetime {value!r}: store times must be timezone-aware")
    utc = value.astimezone(UTC).replace(tzinfo=None)
    return utc.isoformat(timespec="microseconds") + "Z"


def parse_datetime(text: str) -> datetime:
    """The timezone-aware UTC datetime of an ISO-8601 string with an offset."""
    value = datetime.fromisoformat(text)
    if value.utcoffset() is None:
        raise ValueError(f"datetime {text!r} has no UTC offset")
    return value.astimezone(UTC)


# ------------------------------------------------------------------- defaults


@cache
def declared_defaults(cls: type[DataclassInstance]) -> Mapping[str, object]:
    """The default of each field of `cls` that has one (a factory's product
    for those with a default_factory)."""
    defaults: dict[str, object] = {}
    for field in dataclasses.fields(cls):
        if field.default is not dataclasses.MISSING:
            defaults[field.name] = field.default
        elif field.default_factory is not dataclasses.MISSING:
            defaults[field.name] = field.default_factory()
    return defaults


def without_defaults(obj: DataclassInstance, encoded: Document) -> Document:
    """`encoded` minus the keys whose field in `obj` still has its default."""
    defaults = declared_defaults(type(obj))
    return {
        key: value
        for key, value in encoded.items()
        if key not in defaults or getattr(obj, key) != defaults[key]
    }


def present_fields(data: Mapping[str, Any], **decoders: Callable[[Any], object]) -> dict[str, Any]:
    """Constructor arguments for the keys present in `data`, each decoded;
    an absent key is left out, so the dataclass default applies."""
    return {key: decode(data[key]) for key, decode in decoders.items() if key in data}


# --------------------------------------------------------------------- values


def enum_value(member: StrEnum | None) -> str | None:
    return None if member is None else member.value


def optional_enum(enum: type[_E], value: str | None) -> _E | None:
    return None if value is None else enum(value)


def optional(decode: Callable[[Any], _T]) -> Callable[[Any], _T | None]:
    return lambda value: None if value is None else decode(value)


def tuple_of(decode: Callable[[Any], _T]) -> Callable[[Any], tuple[_T, ...]]:
    return lambda values: tuple(decode(value) for value in values)


def float_map(data: Mapping[str, Any]) -> dict[str, float]:
    return {str(key): float(value) for key, value in data.items()}

"""The stored shape of domain objects: one codec, driven by the dataclasses.

Every store keeps domain objects as the same JSON-able dicts (SQLite's JSON
columns, MongoDB, the live bus, a log line), and this module makes them
from the dataclasses' own fields and type annotations; there is no codec
per type to keep in step with the model. The shape:

- a dataclass is an object with a key per field, named as the field;
- enums are kept as their values, datetimes as ISO-8601 UTC strings with
  all six microsecond digits (`2026-11-25T08:00:00.123456Z`), so that
  SQL and MongoDB compare and sort them as strings; tuples are lists;
  JSON-object fields (channel metadata's additional_data, ...) as they are;
- encoding leaves out every field that still has its declared default, so
  stored documents stay small; decoding gives absent keys that default
  again, which also lets documents written before a field existed load
  unchanged. A field without a default that may be None (a content's
  `type`) reads as None when absent, and one holding a dataclass whose
  every field has a default (a result's `state`) as that default;
- decoding checks every value against its field's type and ignores keys it
  does not know (a store's own, such as MongoDB's `_id`); a document that
  does not fit raises StoredShapeError naming the path of the first bad
  value, never a half-built object;
- `from_document(type(obj), to_document(obj)) == obj` for every stored type.

The codec of a class is made the first time it is used (nothing at import).
"""

from __future__ import annotations

import dataclasses
import math
import operator
import sys
import types
import typing
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from enum import Enum
from functools import cache
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

# A JSON object as the codec produces and accepts it.
Document: TypeAlias = dict[str, Any]

_T = TypeVar("_T")

# ------------------------------------------------------------------ datetimes


def format_datetime(value: datetime) -> str:
    """`2026-11-25T08:00:00.123456Z`; the value must be timezone-aware."""
    if value.tzinfo is UTC:  # nearly always: the clock's own (one C call)
        return value.isoformat(timespec="microseconds")[:-6] + "Z"
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


# ---------------------------------------------------------------------- codec


class StoredShapeError(ValueError):
    """A stored document that is not the shape of the type it is read as."""

    def __init__(self, problem: str, path: tuple[str | int, ...] = ()) -> None:
        self.problem = problem
        self.path = path
        super().__init__(problem)

    def within(self, step: str | int) -> StoredShapeError:
        return StoredShapeError(self.problem, (step, *self.path))

    def __str__(self) -> str:
        if not self.path:
            return self.problem
        where = "".join(f"[{step}]" if isinstance(step, int) else f".{step}" for step in self.path)
        return f"{where.lstrip('.')}: {self.problem}"


def to_document(obj: DataclassInstance) -> Document:
    """The stored document of a domain object."""
    return _codec(type(obj)).encode(obj)


def from_document(cls: type[_T], data: object) -> _T:
    """The `cls` a stored document holds; StoredShapeError if it holds none."""
    try:
        return typing.cast(_T, _codec(typing.cast(Any, cls)).decode(data))
    except StoredShapeError as error:
        raise StoredShapeError(f"not a stored {cls.__name__}: {error}") from None


_Encode = Callable[[Any], Any]
_Decode = Callable[[Any], Any]
_ABSENT = object()


class _Codec:
    """One dataclass's encoder and decoder, from its fields' types."""

    __slots__ = ("_cls", "_decoders", "_encoders", "_values")

    def __init__(self, cls: type) -> None:
        self._cls = cls
        hints = _field_types(cls)
        # (name, default or _ABSENT, value encoder or None when kept as is)
        self._encoders: list[tuple[str, object, _Encode | None]] = []
        # (name, decoder, value when absent or _ABSENT when required)
        self._decoders: list[tuple[str, _Decode, object]] = []
        for field in dataclasses.fields(cls):
            hint = hints[field.name]
            default = declared_defaults(cls).get(field.name, _ABSENT)
            self._encoders.append((field.name, default, _value_encoder(hint)))
            if field.default is not dataclasses.MISSING:
                when_absent: object = field.default
            elif field.default_factory is not dataclasses.MISSING:
                when_absent = _Made(field.default_factory)
            else:
                when_absent = _when_required_absent(hint)
            self._decoders.append((field.name, _value_decoder(hint), when_absent))
        # Every field's value in one call (a tuple, in the encoders' order).
        names = [name for name, _, _ in self._encoders]
        self._values = operator.attrgetter(*names) if len(names) > 1 else _fields_of(names)

    def encode(self, obj: object) -> Document:
        document: Document = {}
        for (name, default, encode), value in zip(self._encoders, self._values(obj), strict=True):
            if default is not _ABSENT and (value is default or value == default):
                continue
            document[name] = value if encode is None else encode(value)
        return document

    def decode(self, data: object) -> object:
        if not isinstance(data, Mapping):
            raise StoredShapeError(f"expected an object, got {_shown(data)}")
        arguments: dict[str, object] = {}
        for name, decode, when_absent in self._decoders:
            value = data.get(name, _ABSENT)
            if value is _ABSENT:
                if when_absent is _ABSENT:
                    raise StoredShapeError("missing", (name,))
                if type(when_absent) is _Made:
                    when_absent = when_absent.factory()
                arguments[name] = when_absent
                continue
            try:
                arguments[name] = decode(value)
            except StoredShapeError as error:
                raise error.within(name) from None
        try:
            return self._cls(**arguments)
        except (TypeError, ValueError) as error:
            raise StoredShapeError(f"refused by {self._cls.__name__}: {error}") from None


@cache
def _codec(cls: Any) -> _Codec:
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a stored type (a dataclass)")
    return _Codec(typing.cast(type, cls))


def _when_required_absent(hint: Any) -> object:
    # Tolerated as today's documents allow: `X | None` reads as None, a
    # dataclass made only of defaults as that default (called by decode).
    if _optional_of(hint) is not None:
        return None
    if dataclasses.is_dataclass(hint) and all(
        field.default is not dataclasses.MISSING or field.default_factory is not dataclasses.MISSING
        for field in dataclasses.fields(hint)
    ):
        return _Made(typing.cast(Callable[[], object], hint))
    return _ABSENT


class _Made:
    """A value made anew for each document that lacks its key."""

    __slots__ = ("factory",)

    def __init__(self, factory: Callable[[], object]) -> None:
        self.factory = factory


# ------------------------------------------------------------ value encoders


def _value_encoder(hint: Any) -> _Encode | None:
    """How a field's value becomes JSON; None when it already is."""
    inner = _optional_of(hint)
    if inner is not None:
        encode = _value_encoder(inner)
        if encode is None:
            return None
        return lambda value: None if value is None else encode(value)
    origin = typing.get_origin(hint)
    if origin is tuple:
        encode_item = _value_encoder(_tuple_item(hint))
        if encode_item is None:
            return list
        return lambda values: [encode_item(value) for value in values]
    if origin is not None and issubclass(origin, Mapping):
        # A copy: the document must not share the frozen object's dict.
        return dict
    if isinstance(hint, type):
        if issubclass(hint, Enum):
            return _enum_value
        if issubclass(hint, datetime):
            return format_datetime
        if dataclasses.is_dataclass(hint):
            return _codec(hint).encode
        if hint in (str, int, float, bool):
            return None
    raise TypeError(f"no stored shape for {hint!r}")


# Enum.value is a property (a Python call); `_value_` is the attribute behind it.
_enum_value = operator.attrgetter("_value_")


def _fields_of(names: list[str]) -> Callable[[object], tuple[object, ...]]:
    """The values of at most one field, as a tuple (attrgetter of one name
    gives the value itself)."""
    if not names:
        return lambda obj: ()
    get = operator.attrgetter(names[0])
    return lambda obj: (get(obj),)


# ------------------------------------------------------------ value decoders


def _value_decoder(hint: Any) -> _Decode:
    """How a field's stored value is checked and made its field's type."""
    inner = _optional_of(hint)
    if inner is not None:
        decode = _value_decoder(inner)
        return lambda value: None if value is None else decode(value)
    origin = typing.get_origin(hint)
    if origin is tuple:
        return _tuple_decoder(_value_decoder(_tuple_item(hint)))
    if origin is not None and issubclass(origin, Mapping):
        value_hint = typing.get_args(hint)[1]
        return _float_map if value_hint is float else _json_object
    if isinstance(hint, type):
        if issubclass(hint, Enum):
            return _enum_decoder(hint)
        if issubclass(hint, datetime):
            return _datetime
        if dataclasses.is_dataclass(hint):
            return _codec(hint).decode
        scalar = _SCALARS.get(hint)
        if scalar is not None:
            return scalar
    raise TypeError(f"no stored shape for {hint!r}")


def _string(value: object) -> str:
    if type(value) is str:
        return value
    if isinstance(value, str):
        return str(value)
    raise StoredShapeError(f"expected a string, got {_shown(value)}")


def _integer(value: object) -> int:
    # bool is an int to Python, not to JSON; MongoDB's Int64 is an int.
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    raise StoredShapeError(f"expected an integer, got {_shown(value)}")


def _number(value: object) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise StoredShapeError(f"expected a number, got {_shown(value)}")


def _boolean(value: object) -> bool:
    if isinstance(value, bool):
        return value
    raise StoredShapeError(f"expected true or false, got {_shown(value)}")


_SCALARS: dict[type, _Decode] = {str: _string, int: _integer, float: _number, bool: _boolean}


def _datetime(value: object) -> datetime:
    if not isinstance(value, str):
        raise StoredShapeError(f"expected an ISO-8601 time, got {_shown(value)}")
    try:
        return parse_datetime(value)
    except ValueError:
        raise StoredShapeError(f"expected an ISO-8601 time with an offset, got {value!r}") from None


def _enum_decoder(enum: type[Enum]) -> _Decode:
    def decode(value: object) -> Enum:
        try:
            return enum(value)
        except ValueError:
            allowed = ", ".join(repr(member.value) for member in enum)
            raise StoredShapeError(f"expected one of {allowed}, got {_shown(value)}") from None

    return decode


def _tuple_decoder(decode_item: _Decode) -> _Decode:
    def decode(values: object) -> tuple[object, ...]:
        if not isinstance(values, list | tuple):
            raise StoredShapeError(f"expected a list, got {_shown(values)}")
        items = []
        for index, value in enumerate(values):
            try:
                items.append(decode_item(value))
            except StoredShapeError as error:
                raise error.within(index) from None
        return tuple(items)

    return decode


def _json_object(value: object) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise StoredShapeError(f"expected an object, got {_shown(value)}")
    return dict(value)


def _float_map(value: object) -> dict[str, float]:
    # Scores come from the engine, which may send NaN or an infinity; JSON
    # has neither, and the stores' JSON text keeps them as null: read as NaN.
    mapping = _json_object(value)
    try:
        return {
            str(key): math.nan if number is None else _number(number)
            for key, number in mapping.items()
        }
    except StoredShapeError as error:
        raise StoredShapeError(f"expected numbers: {error.problem}") from None


# --------------------------------------------------------------- annotations


def _field_types(cls: type) -> dict[str, Any]:
    """Each field's annotation, evaluated one level only (as its module sees
    it): JsonObject's recursive JsonValue stays a forward reference, which
    typing.get_type_hints would evaluate in a module that may lack its names."""
    namespace = vars(sys.modules[cls.__module__])
    return {
        field.name: eval(field.type, namespace) if isinstance(field.type, str) else field.type  # noqa: S307
        for field in dataclasses.fields(cls)
    }


def _optional_of(hint: Any) -> Any:
    """X of `X | None`; None for any other hint."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        arguments = typing.get_args(hint)
        if len(arguments) == 2 and type(None) in arguments:
            return next(argument for argument in arguments if argument is not type(None))
    return None


def _tuple_item(hint: Any) -> Any:
    arguments = typing.get_args(hint)
    if len(arguments) != 2 or arguments[1] is not Ellipsis:
        raise TypeError(f"only tuple[X, ...] is stored, not {hint!r}")
    return arguments[0]


def _shown(value: object) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"

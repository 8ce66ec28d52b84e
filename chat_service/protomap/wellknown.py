"""Mapping of protobuf's well-known types: Timestamp, Duration and Struct.

Mapping a proto message in never fails on anything the wire can carry (bad
values are the domain validator's to reject, as INVALID_ARGUMENT naming the
field), with one exception: a Timestamp that no `datetime` can hold, which
`timestamp_to_datetime` rejects itself, as InvalidArgument naming the field.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2

from chat_service.domain.errors import InvalidArgument
from chat_service.domain.model import JsonObject, JsonValue

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NANOS_PER_SECOND = 1_000_000_000
_SECONDS_PER_DAY = 86_400
# google.protobuf.Duration's own limit (about 10,000 years).
_MAX_DURATION_SECONDS = 315_576_000_000
# Up to 2**53 a double holds every integer exactly; beyond it, a number that
# looks integral may not be the integer that was sent, so it stays a float.
_MAX_EXACT_INTEGER = 2**53


# ----------------------------------------------------------------- Timestamp


def datetime_to_timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    """An aware datetime as a Timestamp; a naive one is taken to be UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    # Integer arithmetic on the timedelta, so no precision is lost to floats.
    delta = value - _EPOCH
    return timestamp_pb2.Timestamp(
        seconds=delta.days * _SECONDS_PER_DAY + delta.seconds,
        nanos=delta.microseconds * 1_000,
    )


def timestamp_to_datetime(value: timestamp_pb2.Timestamp, *, field: str) -> datetime:
    """A Timestamp as a timezone-aware UTC datetime, truncated to microseconds.

    Raises InvalidArgument naming `field` when the Timestamp is not a valid
    one (nanos outside 0..999,999,999) or lies outside 0001-01-01 to
    9999-12-31, the range both Timestamp and datetime allow: there is no
    datetime to hand the validator, so the mapper rejects it itself.
    """
    if not 0 <= value.nanos < _NANOS_PER_SECOND:
        raise InvalidArgument.of(field, "nanos must be between 0 and 999999999")
    try:
        return _EPOCH + timedelta(seconds=value.seconds, microseconds=value.nanos // 1_000)
    except OverflowError:
        raise InvalidArgument.of(
            field, "must be between 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z"
        ) from None


# ------------------------------------------------------------------ Duration


def seconds_to_duration(seconds: float) -> duration_pb2.Duration:
    """A non-negative Duration; NaN and negatives become 0, huge values the maximum.

    Used for metrics and retry hints, which must never fail the call they
    describe.
    """
    if math.isnan(seconds) or seconds <= 0:
        return duration_pb2.Duration()
    if seconds >= _MAX_DURATION_SECONDS:
        return duration_pb2.Duration(seconds=_MAX_DURATION_SECONDS)
    whole, nanos = divmod(round(seconds * _NANOS_PER_SECOND), _NANOS_PER_SECOND)
    return duration_pb2.Duration(seconds=whole, nanos=nanos)


def milliseconds_to_duration(milliseconds: float) -> duration_pb2.Duration:
    return seconds_to_duration(milliseconds / 1_000)


# -------------------------------------------------------------------- Struct


def struct_to_dict(value: struct_pb2.Struct) -> dict[str, JsonValue]:
    """A Struct as plain JSON-like Python values.

    Struct numbers are doubles: integral ones up to 2**53 come back as int
    (as in protobuf's JSON mapping), others as float, NaN and infinities
    included. Recursion is bounded by protobuf's parse depth limit.
    """
    return {key: _value_to_python(item) for key, item in value.fields.items()}


def dict_to_struct(value: JsonObject) -> struct_pb2.Struct:
    """Plain JSON-like values as a Struct; ints become doubles (huge ones infinite)."""
    struct = struct_pb2.Struct()
    for key, item in value.items():
        _fill_value(struct.fields[key], item)
    return struct


def dict_to_struct_or_none(value: JsonObject) -> struct_pb2.Struct | None:
    """As dict_to_struct, but None (the field left unset) for an empty object.

    Outbound messages leave empty objects out, as proto3 does with every
    other default value; inbound, an unset Struct reads as {} all the same.
    """
    return dict_to_struct(value) if value else None


def _value_to_python(value: struct_pb2.Value) -> JsonValue:
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        return _number_to_python(value.number_value)
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return struct_to_dict(value.struct_value)
    if kind == "list_value":
        return [_value_to_python(item) for item in value.list_value.values]
    return None  # null_value, or a Value with no kind set


def _number_to_python(number: float) -> int | float:
    if number.is_integer() and abs(number) <= _MAX_EXACT_INTEGER:
        return int(number)
    return number


def _fill_value(target: struct_pb2.Value, item: JsonValue) -> None:
    # bool before int: bool is a subclass of int.
    if item is None:
        target.null_value = struct_pb2.NULL_VALUE
    elif isinstance(item, bool):
        target.bool_value = item
    elif isinstance(item, int | float):
        target.number_value = _number_to_double(item)
    elif isinstance(item, str):
        target.string_value = item
    elif isinstance(item, Mapping):
        target.struct_value.SetInParent()  # so that an empty object is still an object
        for key, child in item.items():
            _fill_value(target.struct_value.fields[key], child)
    else:
        target.list_value.SetInParent()
        for child in item:
            _fill_value(target.list_value.values.add(), child)


def _number_to_double(number: int | float) -> float:
    try:
        return float(number)
    except OverflowError:  # an int too large for a double
        return math.inf if number > 0 else -math.inf

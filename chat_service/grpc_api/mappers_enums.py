"""The gRPC API's own enum mapping: its request enums (sort order, export
format) and the repeated enum filters of its requests.

The enums shared with the adapters (channel, status, content types...) are
in chat_service.protomap.enums; like those, `*_from_proto` maps the
UNSPECIFIED zero value and unknown numbers to None.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from enum import Enum
from typing import TypeVar

from chatbot.chat.v1 import chat_service_pb2

from chat_service.domain.enums import ExportFormat, SortOrder
from chat_service.domain.errors import FieldViolation
from chat_service.protomap.enums import EnumMapping

_D = TypeVar("_D", bound=Enum)
_K = TypeVar("_K", int, str)

_SORT_ORDERS = EnumMapping(
    {
        SortOrder.ASCENDING: chat_service_pb2.SORT_ORDER_ASCENDING,
        SortOrder.DESCENDING: chat_service_pb2.SORT_ORDER_DESCENDING,
    },
    chat_service_pb2.SORT_ORDER_UNSPECIFIED,
)

_EXPORT_FORMATS = EnumMapping(
    {
        ExportFormat.JSON_LINES: chat_service_pb2.EXPORT_FORMAT_JSON_LINES,
        ExportFormat.CSV: chat_service_pb2.EXPORT_FORMAT_CSV,
    },
    chat_service_pb2.EXPORT_FORMAT_UNSPECIFIED,
)


def sort_order_from_proto(value: int) -> SortOrder | None:
    return _SORT_ORDERS.from_proto(value)


def sort_order_to_proto(value: SortOrder | None) -> chat_service_pb2.SortOrder.ValueType:
    return _SORT_ORDERS.to_proto(value)


def export_format_from_proto(value: int) -> ExportFormat | None:
    return _EXPORT_FORMATS.from_proto(value)


def export_format_to_proto(value: ExportFormat | None) -> chat_service_pb2.ExportFormat.ValueType:
    return _EXPORT_FORMATS.to_proto(value)


# Unknown numbers named per repeated enum field, at most.
MAX_UNKNOWN_REPORTED = 10


def enum_set_from_proto(
    numbers: Sequence[_K],
    from_proto: Callable[[_K], _D | None],
    *,
    field: str,
    noun: str,
    violations: list[FieldViolation],
    hint: str = "",
) -> frozenset[_D]:
    """The distinct values of a repeated enum field (a filter): its numbers,
    or the strings of a field that names the values (event types).

    A value the mapping does not know (UNSPECIFIED among them) adds a
    violation naming its first index (and `hint`), for at most
    MAX_UNKNOWN_REPORTED distinct values: a 4 MiB request holds millions of
    them, and one violation each would cost seconds and a status no trailer
    can carry.
    """
    converted = {number: from_proto(number) for number in set(numbers)}
    unknown = {number for number, value in converted.items() if value is None}
    if unknown:
        wanted = min(len(unknown), MAX_UNKNOWN_REPORTED)
        reported: set[_K] = set()
        for index, number in enumerate(numbers):
            if number in unknown and number not in reported:
                reported.add(number)
                violations.append(
                    FieldViolation(f"{field}[{index}]", f"unknown {noun} {number!r}{hint}")
                )
                if len(reported) == wanted:
                    break
    return frozenset(value for value in converted.values() if value is not None)

"""Times as the stores keep them: integer microseconds since the Unix epoch.

Integers, because they compare the same everywhere (SQLite has no date
type; nx-27017, the MongoDB test server, compares date-like strings cut
to the second) and are exact to the microsecond, as datetimes are.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def to_micros(value: datetime) -> int:
    """Microseconds since the epoch; exact (integer timedelta arithmetic)."""
    if value.utcoffset() is None:
        raise ValueError(f"naive datetime {value!r}: store times must be timezone-aware")
    return (value - _EPOCH) // _MICROSECOND


def from_micros(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


def seconds_to_micros(seconds: float) -> int:
    return round(seconds * 1_000_000)


def now_micros() -> int:
    """Wall-clock time, for leases: they must mean the same to every process
    sharing the database. Only liveness depends on it (a lease taken over
    late or early), never safety: every store write that a lease guards is
    also conditional on the lease still being its writer's."""
    return time.time_ns() // 1000

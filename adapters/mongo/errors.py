"""Driver errors -> the store port's errors.

"MongoDB cannot serve this now" (no server to select, a dropped connection,
a network timeout, a primary stepping down, a server shutting down) becomes
StoreUnavailable: the caller may retry, and the driver reconnects by itself
meanwhile. Everything else is a bug or a broken deployment and propagates
as it is.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from pymongo.errors import (
    BulkWriteError,
    ConnectionFailure,
    DuplicateKeyError,
    ExecutionTimeout,
    OperationFailure,
    PyMongoError,
    WTimeoutError,
)

from chat_service.ports import StoreUnavailable

# ConnectionFailure already covers AutoReconnect, NetworkTimeout,
# NotPrimaryError, ServerSelectionTimeoutError and WaitQueueTimeoutError.
_UNAVAILABLE_TYPES = (ConnectionFailure, ExecutionTimeout, WTimeoutError)

# Server codes of the same meaning that may arrive as a plain OperationFailure.
_UNAVAILABLE_CODES = frozenset(
    {
        6,  # HostUnreachable
        7,  # HostNotFound
        50,  # MaxTimeMSExpired
        64,  # WriteConcernFailed
        89,  # NetworkTimeout
        91,  # ShutdownInProgress
        189,  # PrimarySteppedDown
        262,  # ExceededTimeLimit
        9001,  # SocketException
        10107,  # NotWritablePrimary
        11600,  # InterruptedAtShutdown
        11602,  # InterruptedDueToReplStateChange
        13435,  # NotPrimaryNoSecondaryOk
        13436,  # NotPrimaryOrSecondary
    }
)

_DUPLICATE_KEY_CODES = frozenset({11000, 11001, 12582})


def means_unavailable(error: PyMongoError) -> bool:
    if isinstance(error, _UNAVAILABLE_TYPES):
        return True
    if isinstance(error, OperationFailure) and error.code in _UNAVAILABLE_CODES:
        return True
    return error.has_error_label("RetryableWriteError") or error.has_error_label(
        "TransientTransactionError"
    )


@contextmanager
def translated_errors(operation: str) -> Iterator[None]:
    """Runs a block of driver calls, raising StoreUnavailable for the errors
    that mean MongoDB cannot be used now."""
    try:
        yield
    except PyMongoError as error:
        if means_unavailable(error):
            raise StoreUnavailable(f"MongoDB unavailable ({operation}): {error}") from error
        raise


def is_duplicate_key(error: PyMongoError) -> bool:
    """A unique index refused the write (insert_one, or every error of an
    insert_many)."""
    if isinstance(error, DuplicateKeyError):
        return True
    if isinstance(error, BulkWriteError):
        write_errors = error.details.get("writeErrors", [])
        return bool(write_errors) and all(
            item.get("code") in _DUPLICATE_KEY_CODES for item in write_errors
        )
    return False


def first_failed_index(error: BulkWriteError) -> int:
    """Index, in the inserted list, of the document an ordered insert_many
    stopped at (those before it were inserted)."""
    return int(error.details["writeErrors"][0]["index"])

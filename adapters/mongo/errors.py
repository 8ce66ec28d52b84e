"""Driver errors -> the store port's errors.

"MongoDB cannot serve this now" (no server to select, a dropped connection,
a network timeout, a primary stepping down, a server shutting down) becomes
StoreUnavailable: the caller may retry, and the driver reconnects by itself
meanwhile. "MongoDB cannot take this" (a document past 16 MiB, a field name
or a pattern it refuses: the request's fault, found by the driver or the
server) becomes StoreRejected, which callers see as INVALID_ARGUMENT or
RESOURCE_EXHAUSTED. Everything else is a bug or a broken deployment and
propagates as it is.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from bson.errors import InvalidDocument
from pymongo.errors import (
    BulkWriteError,
    ConnectionFailure,
    DocumentTooLarge,
    DuplicateKeyError,
    ExecutionTimeout,
    OperationFailure,
    PyMongoError,
    WTimeoutError,
)

from chat_service.ports import StoreRejected, StoreUnavailable

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

# Server codes that mean the request's data cannot be stored or searched as
# it is; retrying it unchanged fails the same way.
_TOO_LARGE_CODES = frozenset(
    {
        10334,  # BSONObjectTooLarge
        17419,  # the document an update makes is past 16 MiB (older servers)
    }
)
_REJECTED_CODES = frozenset(
    {
        17280,  # KeyTooLong (an index key past 1024 bytes, before 4.2)
        31032,  # a field name with an embedded NUL
        51091,  # RegularExpressionInvalid
    }
)


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
    that mean MongoDB cannot be used now, and StoreRejected for those that
    mean it cannot take what it was given."""
    try:
        yield
    except InvalidDocument as error:  # raised by the driver, before sending
        too_large = isinstance(error, DocumentTooLarge)
        raise StoreRejected(f"MongoDB ({operation}): {error}", too_large=too_large) from error
    except PyMongoError as error:
        if means_unavailable(error):
            raise StoreUnavailable(f"MongoDB unavailable ({operation}): {error}") from error
        codes = _server_codes(error)
        if codes and codes <= _TOO_LARGE_CODES | _REJECTED_CODES:
            too_large = bool(codes & _TOO_LARGE_CODES)
            raise StoreRejected(f"MongoDB ({operation}): {error}", too_large=too_large) from error
        raise


def _server_codes(error: PyMongoError) -> set[int]:
    """The server's error codes in `error`: its own, or those of every write
    of a bulk write (whose own code only says that some failed)."""
    if isinstance(error, BulkWriteError):
        return {item.get("code") for item in error.details.get("writeErrors", [])} - {None}
    if isinstance(error, OperationFailure) and error.code is not None:
        return {error.code}
    return set()


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

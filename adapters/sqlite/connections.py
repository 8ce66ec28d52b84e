"""SQLite connections driven from asyncio through dedicated threads.

sqlite3 blocks, so a whole unit of work (a read, or a whole transaction)
runs as one synchronous function on a pool thread: one thread hop per
operation, and the event loop never waits on the disk.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from chat_service.ports import StoreUnavailable

_T = TypeVar("_T")

SYNCHRONOUS_MODES = frozenset({"OFF", "NORMAL", "FULL", "EXTRA"})

# Primary result codes meaning "the database cannot be used now" rather
# than "this statement is wrong": the caller may retry later.
_UNUSABLE = frozenset(
    {
        sqlite3.SQLITE_PERM,
        sqlite3.SQLITE_BUSY,  # another process held the lock past the timeout
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_NOMEM,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_CORRUPT,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_PROTOCOL,
        sqlite3.SQLITE_NOTADB,
    }
)


def means_unavailable(error: sqlite3.Error) -> bool:
    code = getattr(error, "sqlite_errorcode", None)
    return code is not None and (code & 0xFF) in _UNUSABLE


def connect(path: Path, *, busy_timeout: float, read_only: bool = False) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), usable
    from any thread but by one at a time (the pools see to that)."""
    connection = sqlite3.connect(
        path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
    )
    connection.row_factory = sqlite3.Row
    if read_only:
        connection.execute("PRAGMA query_only = ON")
    return connection


class ConnectionPool:
    """Runs units of work on its connections, one thread per connection.

    A pool of one connection serializes its work (the writer); a larger pool
    runs reads side by side (WAL lets them run beside the writer).
    """

    def __init__(self, connections: Sequence[sqlite3.Connection], *, name: str) -> None:
        self._connections = tuple(connections)
        self._idle: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        for connection in self._connections:
            self._idle.put(connection)
        self._executor = ThreadPoolExecutor(
            max_workers=len(self._connections), thread_name_prefix=name
        )

    async def run(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._run_on_thread, work)

    def _run_on_thread(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        # Never waits: there are as many connections as threads.
        connection = self._idle.get_nowait()
        try:
            return work(connection)
        except sqlite3.Error as error:
            if means_unavailable(error):
                raise StoreUnavailable(f"SQLite: {error}") from error
            raise
        finally:
            self._idle.put(connection)

    def close(self) -> None:
        """Blocking: waits for the work already submitted, then closes."""
        self._executor.shutdown(wait=True)
        for connection in self._connections:
            connection.close()

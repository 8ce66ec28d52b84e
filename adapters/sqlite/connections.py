"""SQLite connections driven from asyncio through dedicated threads.

sqlite3 blocks, so a whole unit of work (a read, or a whole transaction)
runs as one synchronous function on a pool thread: one thread hop per
operation, and the event loop never waits on the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Generic, TypeVar

from chat_service import bench_counters
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
    return _primary_code(error) in _UNUSABLE


def means_busy(error: sqlite3.Error) -> bool:
    """Another connection holds the lock this statement needs."""
    return _primary_code(error) == sqlite3.SQLITE_BUSY


def _primary_code(error: sqlite3.Error) -> int | None:
    code = getattr(error, "sqlite_errorcode", None)
    return None if code is None else code & 0xFF


def connect(path: Path, *, busy_timeout: float, read_only: bool = False) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), usable
    from any thread but by one at a time (the pools see to that)."""
    connection = sqlite3.connect(
        path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
    )
    connection.row_factory = sqlite3.Row
    if bench_counters.enabled:
        connection.set_trace_callback(bench_counters.count_sql)
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
        if bench_counters.enabled:
            bench_counters.count(bench_counters.STORE_READS)
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


class GroupCommitWriter:
    """Runs write units of work on one connection, many per transaction.

    Every write of the store goes through here. The writer thread takes all
    units queued since its last commit (up to `max_batch`), runs them in one
    `BEGIN IMMEDIATE` transaction and commits once: under load this turns
    many small commits (and as many thread hand-offs) into a few large ones;
    alone, a unit commits as soon as it is queued. If BEGIN or COMMIT fails,
    no unit of the batch took effect and each gets the error.

    A unit that raises rolls back only its own changes and gets its own
    exception; the others commit together. For that, a batch first runs
    without savepoints (units rarely fail, and two statements per unit are
    a fifth of a SendMessage's); if a unit of it raises, the whole
    transaction is rolled back and the batch runs again, each unit inside
    its own SAVEPOINT. A unit is only SQL on the connection and what it
    read, so running it again after a rollback is running it once.
    """

    def __init__(self, connection: sqlite3.Connection, *, name: str, max_batch: int = 64) -> None:
        self._connection = connection
        self._max_batch = max_batch
        # Units go to the thread once per pass of their event loop, all the
        # units of that pass together: one wake-up of the writer thread for
        # them, and one batch where each would otherwise start its own.
        self._outgoing: dict[asyncio.AbstractEventLoop, list[_Unit[Any]]] = {}
        self._queue: queue.SimpleQueue[list[_Unit[Any]] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    async def run(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        if bench_counters.enabled:
            bench_counters.count(bench_counters.STORE_WRITES)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_T] = loop.create_future()
        outgoing = self._outgoing.get(loop)
        if outgoing is None:
            outgoing = self._outgoing[loop] = []
            loop.call_soon(self._hand_over, loop)
        outgoing.append(_Unit(work, future, loop))
        return await future

    def hand_over(self) -> None:
        """Send the units not sent yet to the thread now (before `close`);
        call it on their event loop."""
        for loop in list(self._outgoing):
            self._hand_over(loop)

    def close(self) -> None:
        """Blocking: finishes the units handed over, then closes the connection."""
        self._queue.put(None)
        self._thread.join()
        self._connection.close()

    def _hand_over(self, loop: asyncio.AbstractEventLoop) -> None:
        units = self._outgoing.pop(loop, None)
        if units:
            self._queue.put(units)

    def _work(self) -> None:
        waiting: list[_Unit[Any]] = []
        stopping = False
        while True:
            if not waiting:
                if stopping:
                    return
                units = self._queue.get()
                if units is None:
                    return
                waiting.extend(units)
            # Everything else handed over meanwhile joins the batch.
            while len(waiting) < self._max_batch and not stopping:
                try:
                    units = self._queue.get_nowait()
                except queue.Empty:
                    break
                if units is None:
                    stopping = True  # after what is waiting
                else:
                    waiting.extend(units)
            batch, waiting = waiting[: self._max_batch], waiting[self._max_batch :]
            _deliver(self._commit(batch))

    def _commit(self, batch: list[_Unit[Any]]) -> list[_Outcome]:
        connection = self._connection
        try:
            outcomes = self._run_together(batch)
            if outcomes is None:  # a unit failed: each in its savepoint, then
                outcomes = self._run_apart(batch)
            connection.execute("COMMIT")
            if bench_counters.enabled:
                bench_counters.count(bench_counters.COMMITS)
        except sqlite3.Error as error:
            if connection.in_transaction:
                connection.rollback()
            failure = _translated(error)
            return [(unit, None, failure) for unit in batch]
        return outcomes

    def _run_together(self, batch: list[_Unit[Any]]) -> list[_Outcome] | None:
        """Every unit in one transaction, left open; None (and the
        transaction rolled back) if any unit raised."""
        connection = self._connection
        connection.execute("BEGIN IMMEDIATE")
        outcomes: list[_Outcome] = []
        for unit in batch:
            try:
                outcomes.append((unit, unit.work(connection), None))
            except Exception:
                if connection.in_transaction:  # some errors end it themselves
                    connection.execute("ROLLBACK")
                return None
        return outcomes

    def _run_apart(self, batch: list[_Unit[Any]]) -> list[_Outcome]:
        """Every unit in its own savepoint of one transaction, left open."""
        connection = self._connection
        connection.execute("BEGIN IMMEDIATE")
        outcomes: list[_Outcome] = []
        for unit in batch:
            connection.execute("SAVEPOINT unit")
            try:
                result = unit.work(connection)
            except Exception as error:
                connection.execute("ROLLBACK TO unit")
                outcomes.append((unit, None, _translated(error)))
            else:
                outcomes.append((unit, result, None))
            connection.execute("RELEASE unit")
        return outcomes


class _Unit(Generic[_T]):
    __slots__ = ("future", "loop", "work")

    def __init__(
        self,
        work: Callable[[sqlite3.Connection], _T],
        future: asyncio.Future[_T],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.work = work
        self.future = future
        self.loop = loop


# A unit, and what it returned or raised.
_Outcome = tuple[_Unit[Any], Any, BaseException | None]


def _translated(error: BaseException) -> BaseException:
    if isinstance(error, sqlite3.Error) and means_unavailable(error):
        unavailable = StoreUnavailable(f"SQLite: {error}")
        unavailable.__cause__ = error
        return unavailable
    return error


def _deliver(outcomes: list[_Outcome]) -> None:
    """Resolve the batch's futures with one wake-up per event loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}
    for outcome in outcomes:
        by_loop.setdefault(outcome[0].loop, []).append(outcome)
    for loop, resolved in by_loop.items():
        with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
            loop.call_soon_threadsafe(_resolve, resolved)


def _resolve(outcomes: list[_Outcome]) -> None:
    for unit, result, error in outcomes:
        if unit.future.done():  # the caller was cancelled
            continue
        if error is None:
            unit.future.set_result(result)
        else:
            unit.future.set_exception(error)

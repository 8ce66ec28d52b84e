"""Per-key FIFO locks inside one process.

Correct only while the service runs as one process; several processes need
the Redis adapter. asyncio.Lock already serves waiters in arrival order; this
adds per-key instances that disappear when nobody holds or waits for them,
a timeout, and a fencing token per grant.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field

from chat_service.ports import LockLease, LockTimeout


@dataclass
class _Entry:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0  # holders + waiters; the entry is dropped at zero


class KeyedLocks:
    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self._last_token = 0

    def acquire(self, key: str, *, timeout: float) -> AbstractAsyncContextManager[LockLease]:
        return _Hold(self, key, timeout)

    def _next_token(self) -> int:
        # Stores keep the highest token that wrote, so tokens must keep
        # growing across restarts of the process: microseconds of the clock,
        # bumped when two grants fall in the same microsecond.
        self._last_token = max(self._last_token + 1, time.time_ns() // 1000)
        return self._last_token

    def __len__(self) -> int:
        """Keys held or waited for (for tests: nothing leaks)."""
        return len(self._entries)


class _Hold:
    """One hold of a key (a class rather than a generator: it is on every
    call's path)."""

    __slots__ = ("_entry", "_key", "_locks", "_timeout")

    def __init__(self, locks: KeyedLocks, key: str, timeout: float) -> None:
        self._locks = locks
        self._key = key
        self._timeout = timeout

    async def __aenter__(self) -> LockLease:
        entries = self._locks._entries
        entry = entries.get(self._key)
        if entry is None:
            entry = entries[self._key] = _Entry()
        self._entry = entry
        entry.users += 1
        try:
            if entry.users == 1:
                # Nobody holds or waits for it: granted at once, no timer.
                await entry.lock.acquire()
            else:
                async with asyncio.timeout(self._timeout):
                    await entry.lock.acquire()
        except BaseException as error:
            self._leave()
            if isinstance(error, TimeoutError):
                raise LockTimeout(
                    f"lock {self._key!r} not granted within {self._timeout:g}s"
                ) from None
            raise
        return LockLease(key=self._key, fencing_token=self._locks._next_token())

    async def __aexit__(self, *_: object) -> None:
        self._entry.lock.release()
        self._leave()

    def _leave(self) -> None:
        self._entry.users -= 1
        if self._entry.users == 0:
            del self._locks._entries[self._key]


class InProcessConversationLocks:
    """ConversationLocks for one process."""

    def __init__(self) -> None:
        self._locks = KeyedLocks()

    def hold(
        self, tenant_id: str, conversation_id: str, *, timeout: float
    ) -> AbstractAsyncContextManager[LockLease]:
        return self._locks.acquire(f"{tenant_id}/{conversation_id}", timeout=timeout)

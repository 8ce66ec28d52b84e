"""Per-key FIFO locks inside one process.

Correct only while the service runs as one process; several processes need
the Redis adapter. asyncio.Lock already serves waiters in arrival order; this
adds per-key instances that disappear when nobody holds or waits for them,
a timeout, and a fencing token per grant.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
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

    @asynccontextmanager
    async def acquire(self, key: str, *, timeout: float) -> AsyncIterator[LockLease]:
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry()
        entry.users += 1
        try:
            try:
                async with asyncio.timeout(timeout):
                    await entry.lock.acquire()
            except TimeoutError:
                raise LockTimeout(f"lock {key!r} not granted within {timeout:g}s") from None
            try:
                yield LockLease(key=key, fencing_token=self._next_token())
            finally:
                entry.lock.release()
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._entries[key]

    def _next_token(self) -> int:
        # Stores keep the highest token that wrote, so tokens must keep
        # growing across restarts of the process: microseconds of the clock,
        # bumped when two grants fall in the same microsecond.
        self._last_token = max(self._last_token + 1, time.time_ns() // 1000)
        return self._last_token

    def __len__(self) -> int:
        """Keys held or waited for (for tests: nothing leaks)."""
        return len(self._entries)


class InProcessConversationLocks:
    """ConversationLocks for one process."""

    def __init__(self) -> None:
        self._locks = KeyedLocks()

    def hold(
        self, tenant_id: str, conversation_id: str, *, timeout: float
    ) -> AbstractAsyncContextManager[LockLease]:
        return self._locks.acquire(f"{tenant_id}/{conversation_id}", timeout=timeout)


class InProcessIdempotencyGuard:
    """IdempotencyGuard for one process: a concurrent duplicate waits its turn."""

    def __init__(self) -> None:
        self._locks = KeyedLocks()

    @asynccontextmanager
    async def claim(self, tenant_id: str, key: str, *, timeout: float) -> AsyncIterator[None]:
        async with self._locks.acquire(f"{tenant_id}/{key}", timeout=timeout):
            yield

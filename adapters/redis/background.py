"""Bounded background work for the Redis adapters.

Cleanups (a waiter leaving a lock's queue, a release handed off) must
outlive the caller that needed them: it failed or was cancelled, and must not
wait for Redis once more. Left unbounded they would be one task per failed
call, each holding a pooled connection for a socket timeout while Redis is
stalled, and would starve the calls that matter of connections. So at most
`concurrency` run at once, and past `backlog` tasks new ones are dropped (and
counted): every one of them is an optimisation over a TTL or a lease that
ends the entry anyway.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger(__name__)


class BoundedBackground:
    def __init__(self, *, concurrency: int = 4, backlog: int = 256) -> None:
        self._concurrency = concurrency
        self._slots: asyncio.Semaphore | None = None  # made on the loop, when first used
        self._backlog = backlog
        self._tasks: set[asyncio.Task[None]] = set()
        self.dropped = 0

    def spawn(self, work: Coroutine[Any, Any, None], what: str) -> bool:
        """Run `work` in the background; False (and `work` closed unrun) when
        the backlog is full."""
        if len(self._tasks) >= self._backlog:
            work.close()
            self.dropped += 1
            log.warning("redis cleanup skipped (%d pending): %s", len(self._tasks), what)
            return False
        task = asyncio.create_task(self._run(work), name=what)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _run(self, work: Coroutine[Any, Any, None]) -> None:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._concurrency)
        try:
            async with self._slots:
                await work
        finally:
            work.close()  # unstarted (cancelled while queued): no "never awaited" warning

    @property
    def pending(self) -> int:
        return len(self._tasks)

    async def drain(self) -> None:
        """Wait for the work under way (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

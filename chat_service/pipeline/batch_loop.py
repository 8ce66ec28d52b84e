"""The loop behind the background workers that drain a backlog in batches
(the outbox relay, the webhook inbox, the event tail)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class BatchLoop:
    """Runs `step` (one batch; returns how many items it handled) forever:
    again at once after a full batch, else after a wake-up or `idle_seconds`;
    after an error, again after a backoff that doubles up to `max_backoff`."""

    step: Callable[[], Awaitable[int]]
    wake: asyncio.Event
    batch_size: int
    idle_seconds: float
    max_backoff: float
    log: logging.Logger
    name: str
    first_backoff: float = 0.1
    quiet_errors: tuple[type[Exception], ...] = ()  # logged as warnings, no traceback
    stop: asyncio.Event | None = None  # set: the loop ends at its next turn

    async def run(self) -> None:
        failures = 0
        while True:
            # Set by the owner before it cancels the loop: a cancellation some
            # library swallowed (Python 3.11's asyncio.wait_for can lose one
            # that races its own completion; pymongo uses it) still ends the
            # loop, else shutdown would wait for it for ever. (Not
            # Task.cancelling(): timeouts that never uncancel leave it set.)
            if self.stop is not None and self.stop.is_set():
                return
            # Cleared before the step, so a wake-up that arrives while a
            # batch is under way is not lost.
            self.wake.clear()
            try:
                count = await self.step()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                delay = min(self.max_backoff, self.first_backoff * 2**failures)
                quiet = isinstance(exc, self.quiet_errors)
                self.log.log(
                    logging.WARNING if quiet else logging.ERROR,
                    "%s: %s; retrying in %.1fs",
                    self.name,
                    exc,
                    delay,
                    exc_info=not quiet,
                )
                await asyncio.sleep(delay)
                continue
            failures = 0
            if count < self.batch_size:
                try:
                    async with asyncio.timeout(self.idle_seconds):
                        await self.wake.wait()
                except TimeoutError:
                    pass


class DrainTimings(Protocol):
    """The settings a backlog with retention is worked by."""

    @property
    def batch_size(self) -> int: ...
    @property
    def idle_poll_seconds(self) -> float: ...
    @property
    def max_backoff_seconds(self) -> float: ...
    @property
    def prune_batch_size(self) -> int: ...
    @property
    def prune_interval_seconds(self) -> float: ...


async def drain_with_retention(
    *,
    name: str,
    step: Callable[[], Awaitable[int]],
    prune: Callable[[], Awaitable[int]],
    wake: asyncio.Event,
    stop: asyncio.Event,
    timings: DrainTimings,
    log: logging.Logger,
    quiet_errors: tuple[type[Exception], ...] = (),
) -> None:
    """Works a backlog (`step`, woken by `wake`) and prunes what retention lets
    go (`prune`, on its interval only), both until `stop` or cancellation."""
    working = BatchLoop(
        step=step,
        wake=wake,
        batch_size=timings.batch_size,
        idle_seconds=timings.idle_poll_seconds,
        max_backoff=timings.max_backoff_seconds,
        log=log,
        name=name,
        first_backoff=0.2,
        quiet_errors=quiet_errors,
        stop=stop,
    )
    pruning = BatchLoop(
        step=prune,
        wake=asyncio.Event(),  # never set: on its interval only
        batch_size=timings.prune_batch_size,
        idle_seconds=timings.prune_interval_seconds,
        max_backoff=max(timings.prune_interval_seconds, timings.max_backoff_seconds),
        log=log,
        name=f"{name} retention",
        quiet_errors=quiet_errors,
        stop=stop,
    )
    async with asyncio.TaskGroup() as group:
        group.create_task(working.run())
        group.create_task(pruning.run())

"""Closed-loop load: N callers on one event loop, each making one call after another.

Every caller runs through the warm-up and the measured window without a
pause; a call counts when it completes inside the window (at a steady state
that is the server's throughput, without the bias of calls cut at either
edge), and its latency is its own wall time by `time.perf_counter`. Failed
calls are counted over the whole run, warm-up included: a benchmark that
hides an error is measuring something else.

With a probe, what the server spent is read at both edges of the window
(bench.probes) and divided by the calls completed between the two readings:
the per-call figures (Usage). The calls in flight at either edge are at most
`concurrency` against thousands measured, and they roughly cancel out.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import grpc

from bench.probes import ProbeFailed, ServerProbe, Snapshot

# One call; it raises on any failure, including a reply that is not the expected one.
Call = Callable[[], Awaitable[None]]
# Makes caller number `i`'s call (callers may keep state: a conversation, a counter).
CallerFactory = Callable[[int], Call]

ERROR_SAMPLES = 5


@dataclass(frozen=True, slots=True)
class LoadSettings:
    concurrency: int = 32
    warmup_seconds: float = 1.0
    duration_seconds: float = 4.0
    channels: int = 8  # client connections the callers are spread over
    counters: bool = True  # start the service with its work counters on


@dataclass(frozen=True, slots=True)
class Usage:
    """What the server spent between the probe's two readings, and the calls made meanwhile."""

    calls: int  # successful calls completed between the two readings
    server_cpu_seconds: float
    client_cpu_seconds: float  # this process's (the load generator's)
    counters: Mapping[str, int] | None  # their increase; None: the server keeps none

    def per_call(self, seconds: float) -> float:
        """Microseconds per call; NaN without calls."""
        return seconds / self.calls * 1e6 if self.calls else math.nan

    def counters_per_call(self) -> dict[str, float] | None:
        if self.counters is None:
            return None
        return {
            name: value / self.calls if self.calls else math.nan
            for name, value in self.counters.items()
        }


@dataclass(frozen=True, slots=True)
class LoadResult:
    calls: int  # successful calls completed inside the measured window
    seconds: float  # the window's length
    p50_ms: float  # NaN when no call completed in the window
    p99_ms: float
    errors: Mapping[str, int]  # failed calls by kind (a gRPC code's name, or an exception's)
    error_samples: tuple[str, ...]  # the first few distinct failure messages
    usage: Usage | None = None  # with a probe only

    @property
    def calls_per_second(self) -> float:
        return self.calls / self.seconds

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


async def run_load(
    caller_for: CallerFactory, settings: LoadSettings, probe: ServerProbe | None = None
) -> LoadResult:
    clock = time.perf_counter
    measure_from = clock() + settings.warmup_seconds
    measure_until = measure_from + settings.duration_seconds
    latencies: list[float] = []
    completed: list[float] = []  # when each successful call ended, in order
    errors: Counter[str] = Counter()
    samples: list[str] = []
    usage: Usage | None = None

    async def caller(index: int) -> None:
        call = caller_for(index)
        while (began := clock()) < measure_until:
            try:
                await call()
            except Exception as error:  # every failure is data, never a crash of the bench
                errors[_kind(error)] += 1
                description = _describe(error)
                if len(samples) < ERROR_SAMPLES and description not in samples:
                    samples.append(description)
                continue
            ended = clock()
            completed.append(ended)
            if measure_from <= ended <= measure_until:
                latencies.append(ended - began)

    async def read_at(moment: float, server: ServerProbe) -> tuple[float, float, Snapshot]:
        """The probe's reading at `moment`: when it was taken, the client's CPU, the server's."""
        await asyncio.sleep(max(0.0, moment - clock()))
        asked = clock()
        client_cpu = time.process_time()
        try:
            snapshot = await server.snapshot()
        except OSError as error:  # its /proc entry, or the process itself, is gone
            raise ProbeFailed(f"{server.name}: cannot be read: {error}") from error
        return (asked + clock()) / 2, client_cpu, snapshot

    async def observe(server: ServerProbe) -> None:
        nonlocal usage
        start, client_start, first = await read_at(measure_from, server)
        end, client_end, last = await read_at(measure_until, server)
        usage = Usage(
            calls=bisect.bisect_right(completed, end) - bisect.bisect_left(completed, start),
            server_cpu_seconds=last.cpu_seconds - first.cpu_seconds,
            client_cpu_seconds=client_end - client_start,
            counters=_increase(first.counters, last.counters),
        )

    try:
        async with asyncio.TaskGroup() as callers:
            for index in range(settings.concurrency):
                callers.create_task(caller(index))
            if probe is not None:
                callers.create_task(observe(probe))
    except* ProbeFailed as failed:  # the callers never raise: it is the probe's
        raise failed.exceptions[0] from None

    latencies.sort()
    return LoadResult(
        calls=len(latencies),
        seconds=settings.duration_seconds,
        p50_ms=percentile(latencies, 0.50) * 1000,
        p99_ms=percentile(latencies, 0.99) * 1000,
        errors=dict(errors),
        error_samples=tuple(samples),
        usage=usage,
    )


def _increase(
    before: Mapping[str, int] | None, after: Mapping[str, int] | None
) -> dict[str, int] | None:
    if before is None or after is None:
        return None
    return {name: value - before.get(name, 0) for name, value in after.items()}


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of sorted values; NaN when there are none."""
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def _kind(error: Exception) -> str:
    if isinstance(error, grpc.aio.AioRpcError):
        return error.code().name
    return type(error).__name__


def _describe(error: Exception) -> str:
    if isinstance(error, grpc.aio.AioRpcError):
        return f"{error.code().name}: {error.details()}"
    return f"{type(error).__name__}: {error}"

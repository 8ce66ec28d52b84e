"""Closed-loop load: N callers on one event loop, each making one call after another.

Every caller runs through the warm-up and the measured window without a
pause; a call counts when it completes inside the window (at a steady state
that is the server's throughput, without the bias of calls cut at either
edge), and its latency is its own wall time by `time.perf_counter`. Failed
calls are counted over the whole run, warm-up included: a benchmark that
hides an error is measuring something else.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import grpc

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


@dataclass(frozen=True, slots=True)
class LoadResult:
    calls: int  # successful calls completed inside the measured window
    seconds: float  # the window's length
    p50_ms: float  # NaN when no call completed in the window
    p99_ms: float
    errors: Mapping[str, int]  # failed calls by kind (a gRPC code's name, or an exception's)
    error_samples: tuple[str, ...]  # the first few distinct failure messages

    @property
    def calls_per_second(self) -> float:
        return self.calls / self.seconds

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


async def run_load(caller_for: CallerFactory, settings: LoadSettings) -> LoadResult:
    clock = time.perf_counter
    measure_from = clock() + settings.warmup_seconds
    measure_until = measure_from + settings.duration_seconds
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    samples: list[str] = []

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
            if measure_from <= ended <= measure_until:
                latencies.append(ended - began)

    async with asyncio.TaskGroup() as callers:
        for index in range(settings.concurrency):
            callers.create_task(caller(index))

    latencies.sort()
    return LoadResult(
        calls=len(latencies),
        seconds=settings.duration_seconds,
        p50_ms=percentile(latencies, 0.50) * 1000,
        p99_ms=percentile(latencies, 0.99) * 1000,
        errors=dict(errors),
        error_samples=tuple(samples),
    )


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

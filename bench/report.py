"""What a bench run measured: the runs, each scenario's mean, and the ratios.

Ratios are the report's point: absolute figures on a shared 2-core machine
say little, the ratio to the bare grpc.aio baseline measured in the same run
says how much the service costs. Throughput ratio: the scenario's calls/s
over the baseline's (higher is better, 1.0 is the ceiling); latency ratios:
the scenario's p50 and p99 over the baseline's (lower is better).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bench.load import LoadResult, LoadSettings


@dataclass(frozen=True, slots=True)
class Run:
    scenario: str
    result: LoadResult


@dataclass(frozen=True, slots=True)
class Figures:
    runs: int
    calls_per_second: float
    p50_ms: float
    p99_ms: float


@dataclass(frozen=True, slots=True)
class Comparison:
    scenario: str
    baseline: str
    throughput: float  # scenario calls/s / baseline calls/s
    p50: float  # scenario p50 / baseline p50
    p99: float


@dataclass(frozen=True, slots=True)
class Report:
    settings: LoadSettings
    cpu_count: int
    python: str
    grpcio: str
    payload_bytes: int
    runs: tuple[Run, ...]  # in the order they ran
    baselines: Mapping[str, str]  # scenario -> the scenario it is compared against

    def scenario_names(self) -> list[str]:
        return list(dict.fromkeys(run.scenario for run in self.runs))

    def figures(self, scenario: str) -> Figures:
        """The mean of the scenario's runs (a baseline has two: before and after)."""
        results = [run.result for run in self.runs if run.scenario == scenario]
        if not results:
            raise KeyError(f"no run of {scenario!r}")
        return Figures(
            runs=len(results),
            calls_per_second=statistics.fmean(r.calls_per_second for r in results),
            p50_ms=statistics.fmean(r.p50_ms for r in results),
            p99_ms=statistics.fmean(r.p99_ms for r in results),
        )

    def comparisons(self) -> list[Comparison]:
        compared = []
        for scenario in self.scenario_names():
            baseline = self.baselines.get(scenario)
            if baseline is None:
                continue
            mine, theirs = self.figures(scenario), self.figures(baseline)
            compared.append(
                Comparison(
                    scenario=scenario,
                    baseline=baseline,
                    throughput=_ratio(mine.calls_per_second, theirs.calls_per_second),
                    p50=_ratio(mine.p50_ms, theirs.p50_ms),
                    p99=_ratio(mine.p99_ms, theirs.p99_ms),
                )
            )
        return compared

    @property
    def error_count(self) -> int:
        return sum(run.result.error_count for run in self.runs)

    def problems(self) -> list[str]:
        """Why these figures cannot be trusted; empty when they can."""
        found = []
        for number, run in enumerate(self.runs, 1):
            result = run.result
            if result.error_count:
                kinds = ", ".join(f"{kind} x{count}" for kind, count in result.errors.items())
                found.append(f"run {number} ({run.scenario}): {result.error_count} errors: {kinds}")
                found.extend(f"    {sample}" for sample in result.error_samples)
            if result.calls == 0:
                found.append(f"run {number} ({run.scenario}): no call completed in the window")
        return found


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else math.nan


# ------------------------------------------------------------------ output


def format_table(report: Report) -> str:
    settings = report.settings
    numbers_of = {
        name: [n for n, run in enumerate(report.runs, 1) if run.scenario == name]
        for name in report.scenario_names()
    }
    means = [
        (f"{name} (runs {', '.join(map(str, numbers))})" if len(numbers) > 1 else name, name)
        for name, numbers in numbers_of.items()
    ]
    comparisons = report.comparisons()
    ratio_labels = [f"{c.scenario} / {c.baseline}" for c in comparisons]
    width = 4 + max(len(label) for label in [*(label for label, _ in means), *ratio_labels])

    def row(label: str, *cells: str) -> str:
        return (f"{label:<{width}}" + "".join(f"{cell:>10}" for cell in cells)).rstrip()

    lines = [
        f"chat-service bench: {report.cpu_count} CPUs, Python {report.python}, "
        f"grpcio {report.grpcio}",
        f"{settings.concurrency} concurrent callers, ~{report.payload_bytes}-byte messages, "
        f"warm-up {settings.warmup_seconds:g} s + {settings.duration_seconds:g} s measured per run",
        "a call is one RPC, or one round trip on a caller's own stream",
        "",
        row("run", "calls/s", "p50 ms", "p99 ms", "errors"),
    ]
    for number, run in enumerate(report.runs, 1):
        result = run.result
        lines.append(
            row(
                f"{number:>3} {run.scenario}",
                *_figures(result.calls_per_second, result.p50_ms, result.p99_ms),
                str(result.error_count),
            )
        )
    lines.append(row("mean"))
    for label, name in means:
        mean = report.figures(name)
        lines.append(
            row(f"    {label}", *_figures(mean.calls_per_second, mean.p50_ms, mean.p99_ms))
        )
    if comparisons:
        lines.append(row("ratio (scenario / baseline)", "calls/s", "p50", "p99"))
        for label, c in zip(ratio_labels, comparisons, strict=True):
            lines.append(row(f"    {label}", f"{c.throughput:.3f}", f"{c.p50:.2f}", f"{c.p99:.2f}"))
    return "\n".join(lines)


def _figures(calls_per_second: float, p50_ms: float, p99_ms: float) -> tuple[str, str, str]:
    return f"{calls_per_second:,.0f}", f"{p50_ms:.2f}", f"{p99_ms:.2f}"


def report_json(report: Report) -> dict[str, Any]:
    """The report as JSON-ready data (NaN, for no data, becomes null)."""
    settings = report.settings
    return {
        "cpu_count": report.cpu_count,
        "python": report.python,
        "grpcio": report.grpcio,
        "parameters": {
            "concurrency": settings.concurrency,
            "warmup_seconds": settings.warmup_seconds,
            "duration_seconds": settings.duration_seconds,
            "payload_bytes": report.payload_bytes,
        },
        "runs": [
            {
                "scenario": run.scenario,
                "calls": run.result.calls,
                "seconds": run.result.seconds,
                "calls_per_second": _number(run.result.calls_per_second),
                "p50_ms": _number(run.result.p50_ms),
                "p99_ms": _number(run.result.p99_ms),
                "errors": dict(run.result.errors),
                "error_samples": list(run.result.error_samples),
            }
            for run in report.runs
        ],
        "scenarios": {
            name: {
                "runs": figures.runs,
                "calls_per_second": _number(figures.calls_per_second),
                "p50_ms": _number(figures.p50_ms),
                "p99_ms": _number(figures.p99_ms),
            }
            for name, figures in ((n, report.figures(n)) for n in report.scenario_names())
        },
        "ratios": {
            c.scenario: {
                "baseline": c.baseline,
                "throughput": _number(c.throughput),
                "p50": _number(c.p50),
                "p99": _number(c.p99),
            }
            for c in report.comparisons()
        },
        "error_count": report.error_count,
        "problems": report.problems(),
    }


def _number(value: float) -> float | None:
    return value if math.isfinite(value) else None

"""What a bench run measured: the runs, each scenario's mean, and the ratios.

Ratios are the report's point: absolute figures on a shared 2-core machine
say little, the ratio to the bare grpc.aio baseline measured in the same run
says how much the service costs. Throughput ratio: the scenario's calls/s
over the baseline's (higher is better, 1.0 is the ceiling); latency ratios:
the scenario's p50 and p99 over the baseline's (lower is better).

Beside them, the figures that do not swing with the machine's other load:
the server's CPU time per call (and its ratio to the echo server's), and the
service's work counters per call (SQL statements, commits, thread hops, JSON
encodes: chat_service/bench_counters.py). Throughput moves by 15% between
runs on a shared machine; these are the numbers to drive down.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bench.load import LoadResult, LoadSettings, Usage
from chat_service.bench_counters import (
    COMMITS,
    JSON_DECODES,
    JSON_ENCODES,
    MONGO_COMMANDS,
    SQL_STATEMENTS,
    STORE_READS,
    STORE_WRITES,
)

# Derived: a read or a write handed to the store's threads is a hop there and back.
THREAD_HOPS = "thread_hops"

# The counters per call as the table shows them, in this order.
_COUNTER_LABELS = (
    (SQL_STATEMENTS, "SQL statements"),
    (COMMITS, "commits"),
    (THREAD_HOPS, "thread hops"),
    (STORE_READS, "store reads"),
    (STORE_WRITES, "store writes"),
    (JSON_ENCODES, "JSON encodes"),
    (JSON_DECODES, "JSON decodes"),
    (MONGO_COMMANDS, "MongoDB commands"),
)
# Always shown; the rest only when not zero (no MongoDB commands on SQLite).
_HEADLINE_COUNTERS = frozenset({SQL_STATEMENTS, COMMITS, THREAD_HOPS, JSON_ENCODES})


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
    # Per call, the mean over the runs that were probed; NaN / None when none was.
    server_cpu_us: float
    client_cpu_us: float
    counters: Mapping[str, float] | None


@dataclass(frozen=True, slots=True)
class Comparison:
    scenario: str
    baseline: str
    throughput: float  # scenario calls/s / baseline calls/s
    p50: float  # scenario p50 / baseline p50
    p99: float
    server_cpu: float  # scenario server CPU per call / baseline's


@dataclass(frozen=True, slots=True)
class Report:
    settings: LoadSettings
    cpu_count: int
    python: str
    grpcio: str
    payload_bytes: int
    runs: tuple[Run, ...]  # in the order they ran
    baselines: Mapping[str, str]  # scenario -> the scenario it is compared against
    summaries: Mapping[str, str] | None = None  # scenario -> what it runs

    def scenario_names(self) -> list[str]:
        return list(dict.fromkeys(run.scenario for run in self.runs))

    def figures(self, scenario: str) -> Figures:
        """The mean of the scenario's runs (a baseline has two: before and after)."""
        results = [run.result for run in self.runs if run.scenario == scenario]
        if not results:
            raise KeyError(f"no run of {scenario!r}")
        usages = [r.usage for r in results if r.usage is not None]
        return Figures(
            runs=len(results),
            calls_per_second=statistics.fmean(r.calls_per_second for r in results),
            p50_ms=statistics.fmean(r.p50_ms for r in results),
            p99_ms=statistics.fmean(r.p99_ms for r in results),
            server_cpu_us=_mean(u.per_call(u.server_cpu_seconds) for u in usages),
            client_cpu_us=_mean(u.per_call(u.client_cpu_seconds) for u in usages),
            counters=_mean_counters(usages),
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
                    server_cpu=_ratio(mine.server_cpu_us, theirs.server_cpu_us),
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


def counters_per_call(usage: Usage) -> dict[str, float] | None:
    """The usage's counters per call, with the derived thread hops."""
    counters = usage.counters_per_call()
    if counters is None:
        return None
    counters[THREAD_HOPS] = counters.get(STORE_READS, 0.0) + counters.get(STORE_WRITES, 0.0)
    return counters


def _mean(values: Any) -> float:
    finite = [value for value in values if math.isfinite(value)]
    return statistics.fmean(finite) if finite else math.nan


def _mean_counters(usages: Sequence[Usage]) -> dict[str, float] | None:
    each = [c for c in (counters_per_call(u) for u in usages) if c is not None]
    if not each:
        return None
    names = dict.fromkeys(name for counters in each for name in counters)
    return {name: _mean(counters.get(name, math.nan) for counters in each) for name in names}


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else math.nan


# ------------------------------------------------------------------ output


def format_table(report: Report) -> str:
    settings = report.settings
    comparisons = report.comparisons()
    ratio_labels = [f"{c.scenario} / {c.baseline}" for c in comparisons]
    run_labels = [f"{number:>3} {run.scenario}" for number, run in _numbered(report)]
    width = 4 + max(len(label) for label in [*run_labels, *ratio_labels, "run"])

    def row(label: str, *cells: str, cell: int = 12) -> str:
        return (f"{label:<{width}}" + "".join(f"{c:>{cell}}" for c in cells)).rstrip()

    counting = "on" if settings.counters else "off (--no-counters)"
    lines = [
        f"chat-service bench: {report.cpu_count} CPUs, Python {report.python}, "
        f"grpcio {report.grpcio}",
        f"{settings.concurrency} concurrent callers over {settings.channels} connections, "
        f"~{report.payload_bytes}-byte messages, "
        f"warm-up {settings.warmup_seconds:g} s + {settings.duration_seconds:g} s measured per run",
        "a call is one RPC, or one round trip on a caller's own stream; "
        "CPU is µs per call (server: /proc of its process; client: this process)",
        f"the service's work counters: {counting}",
        "",
        row("run", "calls/s", "p50 ms", "p99 ms", "server CPU", "client CPU", "errors"),
    ]
    for label, (_, run) in zip(run_labels, _numbered(report), strict=True):
        result, usage = run.result, run.result.usage
        server = math.nan if usage is None else usage.per_call(usage.server_cpu_seconds)
        client = math.nan if usage is None else usage.per_call(usage.client_cpu_seconds)
        lines.append(
            row(
                label,
                *_figures(result.calls_per_second, result.p50_ms, result.p99_ms),
                _micros(server),
                _micros(client),
                str(result.error_count),
            )
        )
    for comparison in comparisons:
        lines.extend(["", *_scenario_table(report, comparison)])
    if comparisons:
        lines.extend(
            [
                "",
                row("ratio (scenario / baseline)", "calls/s", "p50", "p99", "server CPU"),
                *(
                    row(
                        f"    {label}",
                        f"{c.throughput:.3f}",
                        f"{c.p50:.2f}",
                        f"{c.p99:.2f}",
                        f"{c.server_cpu:.2f}",
                    )
                    for label, c in zip(ratio_labels, comparisons, strict=True)
                ),
            ]
        )
    return "\n".join(lines)


def _numbered(report: Report) -> list[tuple[int, Run]]:
    return list(enumerate(report.runs, 1))


def _scenario_table(report: Report, comparison: Comparison) -> list[str]:
    """One scenario against its baseline: the figures side by side, the ratios, the counters."""
    mine, theirs = report.figures(comparison.scenario), report.figures(comparison.baseline)
    numbers = [n for n, run in _numbered(report) if run.scenario == comparison.baseline]
    summary = (report.summaries or {}).get(comparison.scenario, "")
    label_width = 22

    def row(label: str, *cells: str) -> str:
        return (f"    {label:<{label_width}}" + "".join(f"{c:>12}" for c in cells)).rstrip()

    baseline_runs = " and ".join(map(str, numbers))
    lines = [
        f"{comparison.scenario}" + (f": {summary}" if summary else ""),
        row(
            "",
            "scenario",
            comparison.baseline,
            "ratio",
        )
        + f"   (baseline: mean of runs {baseline_runs})",
        row(
            "calls/s",
            f"{mine.calls_per_second:,.0f}",
            f"{theirs.calls_per_second:,.0f}",
            f"{comparison.throughput:.3f}",
        ),
        row("p50 ms", f"{mine.p50_ms:.2f}", f"{theirs.p50_ms:.2f}", f"{comparison.p50:.2f}"),
        row("p99 ms", f"{mine.p99_ms:.2f}", f"{theirs.p99_ms:.2f}", f"{comparison.p99:.2f}"),
        row(
            "server CPU µs/call",
            _micros(mine.server_cpu_us),
            _micros(theirs.server_cpu_us),
            f"{comparison.server_cpu:.2f}",
        ),
        row("client CPU µs/call", _micros(mine.client_cpu_us), _micros(theirs.client_cpu_us)),
    ]
    if mine.counters is not None:
        lines.append("    per call:")
        for name, label in _COUNTER_LABELS:
            value = mine.counters.get(name, 0.0)
            if name in _HEADLINE_COUNTERS or value != 0:
                lines.append(row(f"  {label}", f"{value:.2f}") + _by_kind(mine.counters, name))
    return lines


def _by_kind(counters: Mapping[str, float], name: str) -> str:
    """`name`'s break-down (`sql_statements.SELECT`, ...), the largest first; or nothing."""
    prefix = f"{name}."
    kinds = sorted(
        (
            (key.removeprefix(prefix), value)
            for key, value in counters.items()
            if key.startswith(prefix)
        ),
        key=lambda kind: -kind[1],
    )
    shown = ", ".join(f"{kind} {value:.2f}" for kind, value in kinds if value >= 0.005)
    return f"   ({shown})" if shown else ""


def _figures(calls_per_second: float, p50_ms: float, p99_ms: float) -> tuple[str, str, str]:
    return f"{calls_per_second:,.0f}", f"{p50_ms:.2f}", f"{p99_ms:.2f}"


def _micros(value: float) -> str:
    return "-" if not math.isfinite(value) else f"{value:,.0f}"


def report_json(report: Report) -> dict[str, Any]:
    """The report as JSON-ready data (NaN, for no data, becomes null)."""
    settings = report.settings
    return {
        "cpu_count": report.cpu_count,
        "python": report.python,
        "grpcio": report.grpcio,
        "parameters": {
            "concurrency": settings.concurrency,
            "channels": settings.channels,
            "counters": settings.counters,
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
                "usage": None if run.result.usage is None else _usage_json(run.result.usage),
            }
            for run in report.runs
        ],
        "scenarios": {
            name: {
                "runs": figures.runs,
                "calls_per_second": _number(figures.calls_per_second),
                "p50_ms": _number(figures.p50_ms),
                "p99_ms": _number(figures.p99_ms),
                "server_cpu_us_per_call": _number(figures.server_cpu_us),
                "client_cpu_us_per_call": _number(figures.client_cpu_us),
                "counters_per_call": _numbers(figures.counters),
            }
            for name, figures in ((n, report.figures(n)) for n in report.scenario_names())
        },
        "ratios": {
            c.scenario: {
                "baseline": c.baseline,
                "throughput": _number(c.throughput),
                "p50": _number(c.p50),
                "p99": _number(c.p99),
                "server_cpu": _number(c.server_cpu),
            }
            for c in report.comparisons()
        },
        "error_count": report.error_count,
        "problems": report.problems(),
    }


def _usage_json(usage: Usage) -> dict[str, Any]:
    return {
        "calls": usage.calls,
        "server_cpu_seconds": usage.server_cpu_seconds,
        "client_cpu_seconds": usage.client_cpu_seconds,
        "server_cpu_us_per_call": _number(usage.per_call(usage.server_cpu_seconds)),
        "client_cpu_us_per_call": _number(usage.per_call(usage.client_cpu_seconds)),
        "counters": None if usage.counters is None else dict(usage.counters),
        "counters_per_call": _numbers(counters_per_call(usage)),
    }


def _numbers(values: Mapping[str, float] | None) -> dict[str, float | None] | None:
    return None if values is None else {name: _number(v) for name, v in values.items()}


def _number(value: float) -> float | None:
    return value if math.isfinite(value) else None

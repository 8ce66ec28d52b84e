"""Runs the selected scenarios in an order that makes their ratios fair.

The machines are shared and noisy, so absolute figures drift between runs.
Each baseline a selected scenario needs is measured first and again last,
the other scenarios in between, and a scenario's ratios use the mean of
its baseline's before and after runs: a slow drift then weighs on both
sides of the ratio alike.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable, Iterable, Sequence

import grpc

from bench.load import LoadSettings
from bench.report import Report, Run
from bench.scenarios import PAYLOAD_BYTES, Scenario, scenario_named


def run_order(selected: Iterable[Scenario]) -> list[Scenario]:
    """Baselines (selected or needed), then the rest, then the baselines again.

    The rest run in the order of their baselines, so that with one scenario
    per baseline each runs exactly midway between its baseline's two runs.
    """
    chosen = list(dict.fromkeys(selected))
    baselines = list(dict.fromkeys(_baseline_of(scenario) for scenario in chosen))
    others = [scenario for scenario in chosen if scenario not in baselines]
    others.sort(key=lambda scenario: baselines.index(_baseline_of(scenario)))
    return [*baselines, *others, *baselines]


def _baseline_of(scenario: Scenario) -> Scenario:
    """The scenario it is compared against; a baseline is its own."""
    return scenario if scenario.baseline is None else scenario_named(scenario.baseline)


def _quiet(line: str) -> None:
    pass


async def run_bench(
    selected: Sequence[Scenario],
    settings: LoadSettings,
    *,
    progress: Callable[[str], None] = _quiet,
) -> Report:
    """Runs the scenarios (and their baselines); `progress` hears of each run as it starts."""
    order = run_order(selected)
    runs = []
    for number, scenario in enumerate(order, 1):
        progress(f"run {number}/{len(order)}: {scenario.name}")
        runs.append(Run(scenario.name, await scenario.run(settings)))
    return Report(
        settings=settings,
        cpu_count=os.cpu_count() or 0,
        python=platform.python_version(),
        grpcio=grpc.__version__,
        payload_bytes=PAYLOAD_BYTES,
        runs=tuple(runs),
        baselines={s.name: s.baseline for s in selected if s.baseline is not None},
        summaries={s.name: s.summary for s in order},
    )

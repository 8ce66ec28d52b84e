"""`python -m bench` (`make bench`): the service's speed as ratios to bare grpc.aio.

Starts each scenario's servers as child processes on loopback ports, drives
them from this process with concurrent grpc.aio callers, and prints calls/s,
p50 and p99 per run, per scenario, and as ratios to the baseline measured in
the same run. Any failed call fails the bench (exit status 1).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.children import ChildFailed
from bench.load import LoadSettings
from bench.report import format_table, report_json
from bench.runner import run_bench
from bench.scenarios import SCENARIOS, scenario_named

DEFAULTS = LoadSettings()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = LoadSettings(
        concurrency=args.concurrency,
        warmup_seconds=args.warmup,
        duration_seconds=args.duration,
    )
    selected = [scenario_named(name) for name in args.scenarios or [s.name for s in SCENARIOS]]

    try:
        report = asyncio.run(run_bench(selected, settings, progress=_to_stderr))
    except ChildFailed as error:
        print(f"BENCH FAILED: a server under test failed: {error}", file=sys.stderr)
        return 1

    print(format_table(report), flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(report_json(report), indent=2) + "\n")
    problems = report.problems()
    if problems:
        print("\nBENCH FAILED: the figures above are not valid:", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    return 0


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="scenarios:\n" + "\n".join(f"  {s.name}\n      {s.summary}" for s in SCENARIOS),
    )
    parser.add_argument(
        "--scenario",
        action="append",
        dest="scenarios",
        choices=[s.name for s in SCENARIOS],
        metavar="NAME",
        help="run this scenario (repeat for several; default: all); "
        "the baselines they need run too",
    )
    parser.add_argument(
        "--concurrency",
        type=_count,
        default=DEFAULTS.concurrency,
        help=f"concurrent callers (default {DEFAULTS.concurrency})",
    )
    parser.add_argument(
        "--warmup",
        type=_seconds_or_zero,
        default=DEFAULTS.warmup_seconds,
        help=f"seconds of unmeasured load before each run (default {DEFAULTS.warmup_seconds:g})",
    )
    parser.add_argument(
        "--duration",
        type=_seconds,
        default=DEFAULTS.duration_seconds,
        help=f"seconds measured per run (default {DEFAULTS.duration_seconds:g})",
    )
    parser.add_argument(
        "--json", type=Path, metavar="PATH", help="also write the report as JSON to PATH"
    )
    return parser


def _count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def _seconds_or_zero(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {text}")
    return value


if __name__ == "__main__":
    sys.exit(main())

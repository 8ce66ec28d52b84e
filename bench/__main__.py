"""`python -m bench` (`make bench`): the service's speed as ratios to bare grpc.aio.

Starts each scenario's servers as child processes on loopback ports, drives
them from this process with concurrent grpc.aio callers spread over several
connections, and prints calls/s, p50 and p99 per run, per scenario, and as
ratios to the baseline measured in the same run; beside them the servers'
CPU time per call and the service's work counters per call (SQL statements,
commits, thread hops, JSON encodes). The report is also written as JSON to
bench/results/ (or --json PATH). Any failed call fails the bench (exit
status 1).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from bench.children import ChildFailed
from bench.load import LoadSettings
from bench.report import format_table, report_json
from bench.runner import run_bench
from bench.scenarios import SCENARIOS, scenario_named

DEFAULTS = LoadSettings()
# Ignored by git (.gitignore): every run leaves its report here unless --json says otherwise.
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = LoadSettings(
        concurrency=args.concurrency,
        warmup_seconds=args.warmup,
        duration_seconds=args.duration,
        channels=args.channels,
        counters=args.counters,
    )
    names = args.scenarios or [s.name for s in SCENARIOS if s.by_default]
    selected = [scenario_named(name) for name in names]

    try:
        report = asyncio.run(run_bench(selected, settings, progress=_to_stderr))
    except ChildFailed as error:
        print(f"BENCH FAILED: a server under test failed: {error}", file=sys.stderr)
        return 1

    print(format_table(report), flush=True)
    path = args.json or RESULTS_DIR / f"bench-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report_json(report), indent=2) + "\n")
    print(f"\nwritten to {path}", flush=True)
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
        help="run this scenario (repeat for several; default: all but those marked "
        "'only when named'); the baselines they need run too",
    )
    parser.add_argument(
        "--concurrency",
        type=_count,
        default=DEFAULTS.concurrency,
        help=f"concurrent callers (default {DEFAULTS.concurrency})",
    )
    parser.add_argument(
        "--channels",
        type=_count,
        default=DEFAULTS.channels,
        help="client connections the callers are spread over, round-robin "
        f"(default {DEFAULTS.channels})",
    )
    parser.add_argument(
        "--no-counters",
        action="store_false",
        dest="counters",
        help="start the service without its work counters (to see what counting costs)",
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
        "--json",
        type=Path,
        metavar="PATH",
        help="write the report as JSON to PATH (default: bench/results/bench-<UTC time>.json)",
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

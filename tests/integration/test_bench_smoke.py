"""The benchmark still runs end to end, and still refuses to hide failed calls.

Not a speed test (speed is the bench's job, `make bench`): a tiny run that
proves every scenario starts its servers, makes successful calls, and
reports ratios computed from its own figures.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
import pytest

from bench.__main__ import main
from bench.load import LoadSettings, run_load
from bench.report import Report, Run


def test_a_short_bench_run_reports_both_scenarios_and_their_ratios(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bench.json"

    status = main(
        ["--duration", "0.3", "--warmup", "0.1", "--concurrency", "4", "--json", str(path)]
    )

    assert status == 0
    report = json.loads(path.read_text())
    assert [run["scenario"] for run in report["runs"]] == [
        "echo-unary",
        "send-message-sqlite",
        "echo-unary",
    ]
    assert report["error_count"] == 0
    assert report["problems"] == []
    echo = report["scenarios"]["echo-unary"]
    send = report["scenarios"]["send-message-sqlite"]
    assert echo["runs"] == 2
    for figures in (echo, send):
        assert figures["calls_per_second"] > 0
        assert 0 < figures["p50_ms"] <= figures["p99_ms"]
    echo_runs = [run for run in report["runs"] if run["scenario"] == "echo-unary"]
    assert echo["calls_per_second"] == pytest.approx(
        sum(run["calls_per_second"] for run in echo_runs) / 2
    )
    ratios = report["ratios"]["send-message-sqlite"]
    assert ratios["baseline"] == "echo-unary"
    assert ratios["throughput"] == pytest.approx(
        send["calls_per_second"] / echo["calls_per_second"]
    )
    assert ratios["p50"] == pytest.approx(send["p50_ms"] / echo["p50_ms"])
    assert ratios["p99"] == pytest.approx(send["p99_ms"] / echo["p99_ms"])
    table = capsys.readouterr().out
    assert "send-message-sqlite / echo-unary" in table
    assert f"{ratios['throughput']:.3f}" in table


async def test_failed_calls_are_counted_and_make_the_report_invalid() -> None:
    made = 0

    async def every_other_call_fails() -> None:
        nonlocal made
        await asyncio.sleep(0)
        made += 1
        if made % 2:
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.UNAVAILABLE,
                grpc.aio.Metadata(),
                grpc.aio.Metadata(),
                details="server went away",
                debug_error_string="",
            )

    result = await run_load(
        lambda _: every_other_call_fails,
        LoadSettings(concurrency=2, warmup_seconds=0, duration_seconds=0.05),
    )

    # Every failure counts; successes only inside the measured window.
    assert result.errors == {"UNAVAILABLE": made - made // 2}
    assert 0 < result.calls <= made // 2
    assert result.error_samples[0] == "UNAVAILABLE: server went away"
    report = Report(
        settings=LoadSettings(),
        cpu_count=2,
        python="3",
        grpcio="1",
        payload_bytes=100,
        runs=(Run("echo-unary", result),),
        baselines={},
    )
    assert report.problems()[0].startswith("run 1 (echo-unary): ")
    assert f"UNAVAILABLE x{result.error_count}" in report.problems()[0]

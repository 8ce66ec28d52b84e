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
from bench.scenarios import UnexpectedReply, stream_conversations
from bench.servers import running_chat_service
from bench.stream_load import run_stream_load

# Each measured scenario and the bare grpc.aio baseline it is compared against.
PAIRS = {
    "send-message-sqlite": "echo-unary",
    "send-message-mongo": "echo-unary",
    "send-message-production": "echo-unary",
    "stream-conversation-sqlite": "echo-bidi",
}


def test_a_short_bench_run_reports_every_scenario_and_its_ratios(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bench.json"

    status = main(
        ["--duration", "0.3", "--warmup", "0.1", "--concurrency", "4", "--json", str(path)]
    )

    assert status == 0
    report = json.loads(path.read_text())
    # Each baseline before and after; each scenario between its baseline's runs.
    assert [run["scenario"] for run in report["runs"]] == [
        "echo-unary",
        "echo-bidi",
        "send-message-sqlite",
        "send-message-mongo",
        "send-message-production",
        "stream-conversation-sqlite",
        "echo-unary",
        "echo-bidi",
    ]
    assert report["error_count"] == 0
    assert report["problems"] == []
    table = capsys.readouterr().out
    for scenario, baseline in PAIRS.items():
        echo = report["scenarios"][baseline]
        measured = report["scenarios"][scenario]
        assert echo["runs"] == 2
        for figures in (echo, measured):
            assert figures["calls_per_second"] > 0
            assert 0 < figures["p50_ms"] <= figures["p99_ms"]
        echo_runs = [run for run in report["runs"] if run["scenario"] == baseline]
        assert echo["calls_per_second"] == pytest.approx(
            sum(run["calls_per_second"] for run in echo_runs) / 2
        )
        ratios = report["ratios"][scenario]
        assert ratios["baseline"] == baseline
        assert ratios["throughput"] == pytest.approx(
            measured["calls_per_second"] / echo["calls_per_second"]
        )
        assert ratios["p50"] == pytest.approx(measured["p50_ms"] / echo["p50_ms"])
        assert ratios["p99"] == pytest.approx(measured["p99_ms"] / echo["p99_ms"])
        assert f"{scenario} / {baseline}" in table
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


async def test_a_failed_round_trip_drops_its_stream_and_the_next_one_opens_a_new_one() -> None:
    sessions: list[ThirdRoundTripFails] = []

    class ThirdRoundTripFails:
        def __init__(self) -> None:
            self.opened = self.cancelled = False
            self.round_trips = 0
            sessions.append(self)

        async def open(self) -> None:
            self.opened = True

        async def round_trip(self) -> None:
            await asyncio.sleep(0)
            self.round_trips += 1
            if self.round_trips == 3:
                raise UnexpectedReply("a late answer")

        def cancel(self) -> None:
            self.cancelled = True

    result = await run_stream_load(
        lambda _: ThirdRoundTripFails(),
        LoadSettings(concurrency=1, warmup_seconds=0, duration_seconds=0.05),
    )

    assert len(sessions) > 1
    assert all(session.round_trips == 3 for session in sessions[:-1])  # never reused
    assert result.errors == {"UnexpectedReply": sum(s.round_trips == 3 for s in sessions)}
    assert result.calls > 0
    # Every stream opened before use, and none left open, the last one included.
    assert all(session.opened and session.cancelled for session in sessions)


async def test_an_error_event_on_a_conversation_stream_is_a_failed_round_trip() -> None:
    async with running_chat_service() as service:
        result = await stream_conversations(
            service,
            LoadSettings(concurrency=2, warmup_seconds=0, duration_seconds=0.2),
            text="",  # refused: a text message needs a text
        )

    assert result.calls == 0
    assert result.error_count > 0
    assert set(result.errors) == {"StreamRefused"}
    assert result.error_samples[0].startswith("StreamRefused: INVALID_ARGUMENT: ")

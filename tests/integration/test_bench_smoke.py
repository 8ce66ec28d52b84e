"""The benchmark still runs end to end, and still refuses to hide failed calls.

Not a speed test (speed is the bench's job, `make bench`): a tiny run that
proves every scenario starts its servers, makes successful calls, and
reports ratios computed from its own figures, with the servers' CPU time and
the service's work counters per call read from the servers themselves.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import grpc
import pytest

from bench.__main__ import main
from bench.channels import open_channels
from bench.echo_server import UNARY_METHOD
from bench.load import LoadSettings, run_load
from bench.report import Report, Run
from bench.scenarios import UnexpectedReply, stream_conversations
from bench.servers import running_chat_service, running_echo_server
from bench.stream_load import run_stream_load

# Each scenario run by default and the bare grpc.aio baseline it is compared against.
PAIRS = {
    "send-message-sqlite": "echo-unary",
    "send-message-grpc-layer": "echo-unary",
    "send-message-redis-kafka-sqlite": "echo-unary",
    "send-message-2-workers-redis": "echo-unary",
    "send-message-production": "echo-unary",
    "stream-conversation-sqlite": "echo-bidi",
}
ON_SQLITE = (
    "send-message-sqlite",
    "send-message-redis-kafka-sqlite",
    "send-message-2-workers-redis",
    "stream-conversation-sqlite",
)
ON_MONGO = ("send-message-production",)
CONCURRENCY = 4


def test_a_short_bench_run_reports_every_scenario_and_its_ratios(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bench.json"

    status = main(
        [
            *("--duration", "0.3", "--warmup", "0.1", "--json", str(path)),
            *("--concurrency", str(CONCURRENCY), "--channels", "2"),
        ]
    )

    assert status == 0
    report = json.loads(path.read_text())
    # Each baseline before and after; each scenario between its baseline's runs.
    assert [run["scenario"] for run in report["runs"]] == [
        "echo-unary",
        "echo-bidi",
        "send-message-sqlite",
        "send-message-grpc-layer",
        "send-message-redis-kafka-sqlite",
        "send-message-2-workers-redis",
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
        # CPU from /proc: a SendMessage costs clock ticks even in 0.3 s; the
        # echo may not (10 ms ticks), so its figure need only be there.
        assert measured["server_cpu_us_per_call"] > 0
        assert echo["server_cpu_us_per_call"] is not None
        if echo["server_cpu_us_per_call"] > 0:
            assert ratios["server_cpu"] == pytest.approx(
                measured["server_cpu_us_per_call"] / echo["server_cpu_us_per_call"]
            )
        assert echo["counters_per_call"] is None  # the echo keeps none
    _assert_plausible_counters(report["scenarios"])
    # The gRPC layer alone: no pipeline behind it, so no work to count.
    assert report["scenarios"]["send-message-grpc-layer"]["counters_per_call"] is None
    for run in report["runs"]:
        assert run["usage"]["calls"] > 0
        counters = run["usage"]["counters"]
        if counters is not None:  # each break-down adds up to its total
            for total in ("sql_statements", "mongo_commands"):
                parts = [v for k, v in counters.items() if k.startswith(f"{total}.")]
                assert sum(parts) == counters[total]


def _assert_plausible_counters(figures: dict[str, Any]) -> None:
    """The service's work counters per call, as the run above read them."""
    for scenario in ON_SQLITE:
        per_call = figures[scenario]["counters_per_call"]
        # Every SendMessage (or round trip) writes through the writer thread,
        # in statements, with its content encoded as JSON. The slack below 1
        # is for calls in flight at the window's edges.
        assert per_call["store_writes"] > 0.5, scenario
        assert per_call["sql_statements"] > per_call["store_writes"], scenario
        assert per_call["json_encodes"] > 0.5, scenario  # zero: the counter went blind
        assert per_call["thread_hops"] == pytest.approx(
            per_call["store_reads"] + per_call["store_writes"]
        )
        # Group commit: at most one commit per unit written, at least one per batch.
        assert 0 < per_call["commits"] <= per_call["thread_hops"], scenario
        assert per_call["mongo_commands"] == 0, scenario
    for scenario in ON_MONGO:
        per_call = figures[scenario]["counters_per_call"]
        assert per_call["mongo_commands"] > 1, scenario
        assert per_call["sql_statements"] == per_call["thread_hops"] == 0, scenario


async def test_callers_are_spread_over_connections_of_their_own() -> None:
    async with (
        running_echo_server() as server,
        open_channels(server.address, 3) as channels,
    ):
        for index in range(3):
            echo = channels.for_caller(index).unary_unary(UNARY_METHOD, None, None)
            assert await echo(b"ping", timeout=5) == b"ping"
        assert _connections_to(server.address) == 3
        # The control: plain channels to one address share one connection
        # (one more), so the count above is the bench channels' own doing.
        plain = [grpc.aio.insecure_channel(server.address) for _ in range(3)]
        try:
            for channel in plain:
                assert await channel.unary_unary(UNARY_METHOD, None, None)(b"x", timeout=5)
            assert _connections_to(server.address) == 3 + 1
        finally:
            for channel in plain:
                await channel.close(None)


def _connections_to(address: str) -> int:
    """ESTABLISHED client sockets to `address`'s port, from /proc/net/tcp and tcp6
    (gRPC connects on IPv6 sockets, to IPv4 as mapped addresses).
    https://www.kernel.org/doc/Documentation/networking/proc_net_tcp.txt"""
    port = int(address.rsplit(":", 1)[1])
    established = "01"
    rows = [
        row.split()
        for table in ("/proc/net/tcp", "/proc/net/tcp6")
        for row in Path(table).read_text().splitlines()[1:]
    ]
    return sum(1 for row in rows if row[3] == established and int(row[2][-4:], 16) == port)


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

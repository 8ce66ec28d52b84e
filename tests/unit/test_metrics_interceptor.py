"""The metrics interceptor on a real grpc.aio server: how a call's end is
labelled (a client's deadline is not a cancel), and that a method path the
caller makes up never becomes a series."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from adapters.metrics import PrometheusMetrics
from chat_service.grpc_api.metrics_interceptor import MetricsInterceptor

SERVICE = "test.Slow"


async def _never(request: bytes, context: Any) -> bytes:
    await asyncio.Event().wait()  # until the call is cancelled
    return b""


async def _two(request: bytes, context: Any) -> AsyncIterator[bytes]:
    yield b"1"
    yield b"2"


@pytest.fixture
async def served() -> AsyncIterator[tuple[PrometheusMetrics, grpc.aio.Channel]]:
    metrics = PrometheusMetrics()
    handlers = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Never": grpc.unary_unary_rpc_method_handler(_never),
            "Two": grpc.unary_stream_rpc_method_handler(_two),
        },
    )
    server = grpc.aio.server(interceptors=[MetricsInterceptor(metrics)])
    server.add_generic_rpc_handlers((handlers,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield metrics, channel
    finally:
        await server.stop(None)


def _handled(metrics: PrometheusMetrics, method: str, kind: str, code: str) -> float:
    labels = {"grpc_type": kind, "grpc_service": SERVICE, "grpc_method": method, "grpc_code": code}
    return metrics.registry.get_sample_value("grpc_server_handled_total", labels) or 0.0


async def _until_handled(metrics: PrometheusMetrics, method: str) -> dict[str, float]:
    """The codes `method` ended with, once one is recorded (the server
    records it after the client has its status)."""
    for _ in range(500):
        codes = {
            sample.labels["grpc_code"]: sample.value
            for family in metrics.registry.collect()
            for sample in family.samples
            if sample.name == "grpc_server_handled_total" and sample.labels["grpc_method"] == method
        }
        if codes:
            return codes
        await asyncio.sleep(0.01)
    return {}


async def test_a_call_past_its_deadline_is_deadline_exceeded_not_cancelled(
    served: tuple[PrometheusMetrics, grpc.aio.Channel],
) -> None:
    metrics, channel = served
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await channel.unary_unary(f"/{SERVICE}/Never", None, None)(b"", timeout=1.0)
    assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED

    assert await _until_handled(metrics, "Never") == {"DEADLINE_EXCEEDED": 1}


async def test_a_call_the_client_cancels_is_cancelled(
    served: tuple[PrometheusMetrics, grpc.aio.Channel],
) -> None:
    metrics, channel = served
    call = channel.unary_unary(f"/{SERVICE}/Never", None, None)(b"", timeout=60)
    for _ in range(500):  # until the server has it
        if metrics.registry.get_sample_value(
            "grpc_server_started_total",
            {"grpc_type": "unary", "grpc_service": SERVICE, "grpc_method": "Never"},
        ):
            break
        await asyncio.sleep(0.01)
    call.cancel()

    assert await _until_handled(metrics, "Never") == {"CANCELLED": 1}


async def test_a_server_stream_counts_once_as_server_stream(
    served: tuple[PrometheusMetrics, grpc.aio.Channel],
) -> None:
    metrics, channel = served
    responses = [r async for r in channel.unary_stream(f"/{SERVICE}/Two", None, None)(b"")]

    assert responses == [b"1", b"2"]
    assert await _until_handled(metrics, "Two") == {"OK": 1}
    assert _handled(metrics, "Two", "server_stream", "OK") == 1
    started = {"grpc_type": "server_stream", "grpc_service": SERVICE, "grpc_method": "Two"}
    assert metrics.registry.get_sample_value("grpc_server_started_total", started) == 1


async def test_a_method_no_handler_serves_is_not_a_series(
    served: tuple[PrometheusMetrics, grpc.aio.Channel],
) -> None:
    metrics, channel = served
    made_up = "/test.Slow/Anything-a-client-likes-1234"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await channel.unary_unary(made_up, None, None)(b"")
    assert caught.value.code() is grpc.StatusCode.UNIMPLEMENTED
    await channel.unary_stream(f"/{SERVICE}/Two", None, None)(b"").read()  # a known one, after it

    await _until_handled(metrics, "Two")
    values = {
        value
        for family in metrics.registry.collect()
        for sample in family.samples
        for value in sample.labels.values()
    }
    assert not any("Anything" in value for value in values)
    assert "Two" in values

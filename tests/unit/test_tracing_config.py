"""Tracing's settings: OpenTelemetry's own variables, off unless an OTLP
endpoint is set, checked at start, and the samplers they name."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from adapters.tracing import provider as provider_module
from adapters.tracing.provider import sampler_of
from chat_service.__main__ import main
from chat_service.bootstrap import build_services
from chat_service.config import TRACE_SAMPLERS, ConfigError, Settings
from tests.support.net import free_port


def test_tracing_is_off_by_default() -> None:
    assert Settings.from_env({}).tracing.endpoint == ""


def test_the_traces_endpoint_wins_over_the_general_one() -> None:
    settings = Settings.from_env(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://traces.example:4317",
        }
    )
    assert settings.tracing.endpoint == "https://traces.example:4317"
    general = Settings.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"})
    assert general.tracing.endpoint == "http://collector:4317"


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4317"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:0"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
        (
            {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "grpc://x:4317"},
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        ),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
        ({"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"}, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"),
        ({"OTEL_TRACES_SAMPLER": "jaeger_remote"}, "OTEL_TRACES_SAMPLER"),
        ({"OTEL_TRACES_SAMPLER_ARG": "1.5"}, "OTEL_TRACES_SAMPLER_ARG"),
        ({"OTEL_TRACES_SAMPLER_ARG": "nan"}, "OTEL_TRACES_SAMPLER_ARG"),
    ],
)
def test_a_bad_tracing_setting_names_its_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        Settings.from_env(env)


def test_a_bad_tracing_setting_stops_the_start(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "collector")

    assert main(["serve"]) == 2

    assert "OTEL_EXPORTER_OTLP_ENDPOINT must start with" in capsys.readouterr().err


async def test_without_an_endpoint_nothing_is_traced(tmp_path: Path) -> None:
    services = await build_services(Settings.from_env({"DATA_DIR": str(tmp_path)}))
    try:
        assert services.rpc_tracer is None
    finally:
        await services.close()


async def test_with_an_endpoint_the_rpcs_are_traced(tmp_path: Path) -> None:
    # Nothing listens there: the exporter's failures stay in the background.
    endpoint = f"http://127.0.0.1:{free_port()}"
    services = await build_services(
        Settings.from_env({"DATA_DIR": str(tmp_path), "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint})
    )
    try:
        assert services.rpc_tracer is not None
    finally:
        await services.close()


def _sampled(sampler_name: str, ratio: float, *, under_sampled_parent: bool) -> int:
    """How many of 200 spans `sampler_name` keeps: roots, or children of a
    sampled parent (an always-on provider's span)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler_of(sampler_name, ratio))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    parent_provider = TracerProvider()
    parent_tracer = parent_provider.get_tracer("parent")
    for _ in range(200):
        if under_sampled_parent:
            with parent_tracer.start_as_current_span("parent"), tracer.start_as_current_span("x"):
                pass
        else:
            with tracer.start_as_current_span("x"):
                pass
    return len(exporter.get_finished_spans())


@pytest.mark.parametrize(
    ("name", "ratio", "roots", "children"),
    [
        ("always_on", 1.0, 200, 200),
        ("always_off", 1.0, 0, 0),
        ("traceidratio", 0.0, 0, 0),
        ("parentbased_always_on", 1.0, 200, 200),
        ("parentbased_always_off", 1.0, 0, 200),
        ("parentbased_traceidratio", 0.0, 0, 200),
        ("parentbased_traceidratio", 1.0, 200, 200),
    ],
)
def test_the_samplers_do_as_their_names_say(
    name: str, ratio: float, roots: int, children: int
) -> None:
    assert name in TRACE_SAMPLERS
    assert _sampled(name, ratio, under_sampled_parent=False) == roots
    assert _sampled(name, ratio, under_sampled_parent=True) == children


def test_every_sampler_setting_is_one_the_provider_knows() -> None:
    for name in TRACE_SAMPLERS:
        assert sampler_of(name, 0.5) is not None
    with pytest.raises(ValueError, match="unknown sampler"):
        sampler_of("jaeger_remote", 1.0)


class _SlowProvider:
    """A provider whose shutdown outlasts the stop's wait (a collector away)."""

    def __init__(self) -> None:
        self.done = threading.Event()

    def shutdown(self) -> None:
        time.sleep(0.2)
        self.done.set()


def test_a_shutdown_that_overruns_is_left_behind_without_error(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(provider_module, "SHUTDOWN_SECONDS", 0.01)
    failures: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: failures.append(args.exc_value))
    slow = _SlowProvider()

    # The loop ends (and closes) long before the shutdown thread does.
    asyncio.run(provider_module.shut_down(slow))  # type: ignore[arg-type]
    assert slow.done.wait(5)
    time.sleep(0.05)  # the thread's last step, after the provider's shutdown

    assert failures == []
    assert "spans not exported within" in caplog.text

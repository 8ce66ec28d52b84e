"""METRICS_PORT: off unless set, checked at start, one port per worker."""

from __future__ import annotations

import dataclasses
import socket
import threading
from pathlib import Path

import pytest

from adapters.metrics import MetricsServer, PrometheusMetrics
from chat_service import workers
from chat_service.__main__ import main
from chat_service.bootstrap import build_services
from chat_service.config import MAX_METRICS_TENANT_LABELS, ConfigError, Settings
from chat_service.ports import NoMetrics


def test_metrics_are_off_by_default() -> None:
    settings = Settings.from_env({})

    assert settings.metrics_port == 0
    assert settings.metrics_listen_port == 0


def test_each_worker_serves_metrics_on_a_port_of_its_own() -> None:
    settings = Settings.from_env({"METRICS_PORT": "9464"})

    assert settings.metrics_listen_port == 9464
    assert dataclasses.replace(settings, worker_index=0).metrics_listen_port == 9464
    assert dataclasses.replace(settings, worker_index=3).metrics_listen_port == 9467


@pytest.mark.parametrize("value", ["abc", "-1", "65536", "9464.5"])
def test_a_bad_metrics_port_names_the_variable(value: str) -> None:
    with pytest.raises(ConfigError, match="METRICS_PORT"):
        Settings.from_env({"METRICS_PORT": value})


def test_the_metrics_port_must_not_be_the_service_port() -> None:
    with pytest.raises(ConfigError, match="METRICS_PORT must differ from SERVICE_PORT"):
        Settings.from_env({"METRICS_PORT": "8001", "SERVICE_PORT": "8001"})


def test_a_non_numeric_metrics_port_stops_the_start(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    monkeypatch.setenv("METRICS_PORT", "metrics")

    assert main(["serve"]) == 2

    assert "METRICS_PORT must be an integer" in capsys.readouterr().err


def test_workers_whose_metrics_ports_run_past_65535_are_refused_before_any_starts() -> None:
    settings = dataclasses.replace(
        Settings.from_env({"METRICS_PORT": "65535", "REDIS_URL": "redis://r:6379"}), workers=2
    )

    with pytest.raises(ConfigError, match="METRICS_PORT 65535 \\+ worker index 1"):
        workers.check(settings)


def test_workers_whose_metrics_ports_include_the_service_port_are_refused_before_any_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Worker 2's metrics port would be SERVICE_PORT: no worker may start.
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1")
    monkeypatch.setenv("SERVICE_PORT", "8001")
    monkeypatch.setenv("METRICS_PORT", "7999")

    assert main(["serve", "--workers", "4"]) == 2

    assert "METRICS_PORT 7999 to 8002 (one per worker) includes SERVICE_PORT" in (
        capsys.readouterr().err
    )


async def test_without_a_metrics_port_nothing_is_recorded(tmp_path: Path) -> None:
    services = await build_services(Settings.from_env({"DATA_DIR": str(tmp_path)}))
    try:
        assert isinstance(services.metrics, NoMetrics)
    finally:
        await services.close()


async def test_a_taken_metrics_port_fails_the_start_naming_it(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = Settings.from_env(
            {"METRICS_PORT": str(port), "SERVICE_HOST": "127.0.0.1", "DATA_DIR": str(tmp_path)}
        )
        services = await build_services(settings)
        try:
            with pytest.raises(OSError, match="check METRICS_PORT"):
                await services.start()
        finally:
            await services.close()


async def test_closing_stops_the_metrics_thread_and_frees_the_port() -> None:
    server = MetricsServer(PrometheusMetrics(), "127.0.0.1", 0)
    await server.start()
    port = server.port
    # prometheus_client's server thread: Python names it after its target.
    serving = [t for t in threading.enumerate() if "serve_forever" in t.name]
    assert serving

    await server.close()

    assert not [t for t in serving if t.is_alive()]
    with socket.socket() as again:
        again.bind(("127.0.0.1", port))


def test_no_tenant_is_labelled_by_default() -> None:
    assert Settings.from_env({"METRICS_PORT": "9464"}).metrics_tenant_labels == ()


def test_the_labelled_tenants_are_read_once_each_in_order() -> None:
    settings = Settings.from_env(
        {"METRICS_PORT": "9464", "METRICS_TENANT_LABELS": " acme, globex.eu ,acme,Big_Co-1"}
    )

    assert settings.metrics_tenant_labels == ("acme", "globex.eu", "Big_Co-1")


def test_up_to_the_bound_of_tenants_can_be_labelled() -> None:
    listed = [f"tenant-{index}" for index in range(MAX_METRICS_TENANT_LABELS)]
    env = {"METRICS_PORT": "9464", "METRICS_TENANT_LABELS": ",".join(listed)}

    assert Settings.from_env(env).metrics_tenant_labels == tuple(listed)
    with pytest.raises(ConfigError, match=f"at most {MAX_METRICS_TENANT_LABELS}"):
        Settings.from_env({**env, "METRICS_TENANT_LABELS": ",".join([*listed, "one-more"])})


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("acme,not a tenant", "'not a tenant' is not a tenant id"),
        ("-acme", "'-acme' is not a tenant id"),
        ("acme,a/b", "'a/b' is not a tenant id"),
        ("x" * 129, "is not a tenant id"),
        ("acme,other", "must not list 'other'"),
    ],
)
def test_a_bad_tenant_list_names_the_variable(value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=f"METRICS_TENANT_LABELS.*{message}"):
        Settings.from_env({"METRICS_PORT": "9464", "METRICS_TENANT_LABELS": value})


def test_labelled_tenants_need_the_metrics_port() -> None:
    with pytest.raises(ConfigError, match="METRICS_TENANT_LABELS needs METRICS_PORT"):
        Settings.from_env({"METRICS_TENANT_LABELS": "acme"})


def test_a_bad_tenant_list_stops_the_start(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    monkeypatch.setenv("METRICS_PORT", "9464")
    monkeypatch.setenv("METRICS_TENANT_LABELS", "acme,*")

    assert main(["serve"]) == 2

    assert "METRICS_TENANT_LABELS: '*' is not a tenant id" in capsys.readouterr().err


async def test_the_labelled_tenants_reach_the_metrics(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {
            "METRICS_PORT": "9464",
            "METRICS_TENANT_LABELS": "acme",
            "SERVICE_HOST": "127.0.0.1",
            "DATA_DIR": str(tmp_path),
        }
    )
    services = await build_services(settings)
    try:
        assert isinstance(services.metrics, PrometheusMetrics)
        services.metrics.rate_limited("acme")
        services.metrics.rate_limited("globex")
        count = services.metrics.registry.get_sample_value
        assert count("chat_rate_limited_total", {"tenant": "acme"}) == 1
        assert count("chat_rate_limited_total", {"tenant": "other"}) == 1
    finally:
        await services.close()

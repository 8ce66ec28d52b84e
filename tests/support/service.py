"""Runs the real service, `python -m chat_service`, as a child process.

Each ServiceProcess has its own data directory and port; tests talk to it
over a real gRPC channel, stop it with SIGTERM (the production drain path),
kill it, or restart it on the same data.

Its store is a ServiceStore: the SQLite file in its data directory, or a
MongoDB database named after its data directory (MongoDatabases). Either
way the data directory names the data: processes made on one directory
share one store, as replicas share one database, and a restart finds what
was there. A process takes the store given to it, else the one made the
default by `default_store_for_services` (the e2e suite's choice, from
CHAT_TEST_STORE), else SQLite.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from adapters.mongo import MongoStore
from adapters.sqlite.store import SqliteStore
from chat_service.auth import DEV_SCOPES, load_or_create_dev_key
from chat_service.ports import ConversationStore
from tests.support.net import free_port

ROOT = Path(__file__).resolve().parents[2]

# Where the service keeps its SQLite store inside DATA_DIR (bootstrap.py).
SQLITE_FILE_NAME = "chat.sqlite3"

# CHANNEL_SECRETS_KEY of the services started in a production shape
# (MONGODB_URI or REDIS_URL set), which refuse to make a key of their own.
TEST_CHANNEL_SECRETS_KEY = "tests:" + base64.b64encode(bytes(range(32, 64))).decode()

# Channel options for a client that connects before its server listens: a
# failed connection attempt otherwise backs off for a second
# (grpc.initial_reconnect_backoff_ms, 1000 by default), which would be
# waited out at every start of a service that is ready well before that.
FAST_RECONNECT = (
    ("grpc.initial_reconnect_backoff_ms", 20),
    ("grpc.min_reconnect_backoff_ms", 20),
    ("grpc.max_reconnect_backoff_ms", 100),
)


class ServiceStore(Protocol):
    """The store of the services started on a data directory."""

    @property
    def name(self) -> str: ...

    def environment(self, data_dir: Path) -> dict[str, str]:
        """The variables that point a service on `data_dir` at its store."""
        ...

    async def open(self, data_dir: Path) -> ConversationStore:
        """The same store, opened in the test's process (to seed it or look into it)."""
        ...


@dataclass(frozen=True, slots=True)
class SqliteFiles:
    """The embedded default: the SQLite file inside the data directory."""

    @property
    def name(self) -> str:
        return "sqlite"

    def environment(self, data_dir: Path) -> dict[str, str]:
        # Blank, so that a MONGODB_URI in the developer's shell cannot leak in.
        return {"MONGODB_URI": ""}

    async def open(self, data_dir: Path) -> ConversationStore:
        return await SqliteStore.open(data_dir / SQLITE_FILE_NAME)


@dataclass(frozen=True, slots=True)
class MongoDatabases:
    """A database per data directory on one MongoDB server (`server_uri`,
    without a database)."""

    server_uri: str

    @property
    def name(self) -> str:
        return "mongo"

    def uri_for(self, data_dir: Path) -> str:
        return f"{self.server_uri}/{database_for(data_dir)}"

    def environment(self, data_dir: Path) -> dict[str, str]:
        return {"MONGODB_URI": self.uri_for(data_dir)}

    async def open(self, data_dir: Path) -> ConversationStore:
        return await MongoStore.open(self.uri_for(data_dir))


def database_for(data_dir: Path) -> str:
    """The database of the services on `data_dir`: a digest of its absolute
    path (one directory, one database; two directories, two), then the
    path's last two parts for whoever looks at the server's files. Letters,
    digits and _ only, at most 63 characters: valid for MongoDB and
    nx-27017 alike."""
    absolute = data_dir.resolve()
    digest = hashlib.sha256(str(absolute).encode()).hexdigest()[:12]
    readable = re.sub(r"[^A-Za-z0-9]+", "_", f"{absolute.parent.name}_{absolute.name}")
    return f"e2e_{digest}_{readable.strip('_')}"[:63]


_default_store: ServiceStore = SqliteFiles()


@contextmanager
def default_store_for_services(store: ServiceStore) -> Iterator[ServiceStore]:
    """Every ServiceProcess made inside uses `store` unless given another."""
    global _default_store
    previous, _default_store = _default_store, store
    try:
        yield store
    finally:
        _default_store = previous


_SHELL_SETTINGS_IGNORED = frozenset(
    {
        "WORKERS",
        "METRICS_PORT",
        "METRICS_TENANT_LABELS",
        "JWT_JWKS_URL",
        "SECURITY_HUB_URL",
        "MCP_ENGINE_URL",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    }
)


class ServiceProcess:
    def __init__(
        self,
        data_dir: Path,
        env: Mapping[str, str] | None = None,
        *,
        name: str = "service",
        store: ServiceStore | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.extra_env = dict(env or {})
        self.store = _default_store if store is None else store
        # Several processes may share one data directory (and store).
        self.log_path = data_dir / f"{name}.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> ServiceProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {
            # Settings that change what the service is (set in a developer's
            # shell, say) never leak into a test's service: a test sets them.
            **{k: v for k, v in os.environ.items() if k not in _SHELL_SETTINGS_IGNORED},
            "SERVICE_HOST": "127.0.0.1",
            "SERVICE_PORT": str(self.port),
            "DATA_DIR": str(self.data_dir),
            "LOG_LEVEL": "INFO",
            "SHUTDOWN_GRACE_SECONDS": "5",
            "SHUTDOWN_DELAY_SECONDS": "0",
            # token() signs with the development key, also when a test sets
            # MONGODB_URI or REDIS_URL (which refuse it unless allowed).
            "JWT_DEV_KEY": "allow",
            **self.store.environment(self.data_dir),
            **self.extra_env,
        }
        if (env.get("MONGODB_URI") or env.get("REDIS_URL")) and not any(
            name in self.extra_env for name in ("CHANNEL_SECRETS_KEY", "CHANNEL_SECRETS_KEY_FILE")
        ):
            # A production shape needs a configured key (a test that wants
            # to see the refusal sets CHANNEL_SECRETS_KEY itself, to "").
            env["CHANNEL_SECRETS_KEY"] = TEST_CHANNEL_SECRETS_KEY
        log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            [sys.executable, "-m", "chat_service"], cwd=ROOT, env=env, stdout=log, stderr=log
        )
        log.close()
        self._wait_serving(timeout)
        return self

    def _wait_serving(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.address, options=FAST_RECONNECT) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                assert self._process is not None
                if self._process.poll() is not None:
                    raise RuntimeError(f"service exited at start:\n{self.logs()}")
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"service not serving after {timeout}s:\n{self.logs()}")
                time.sleep(0.05)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, then wait for the drain; returns the exit code."""
        process = self._process
        if process is None:
            return 0
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
        finally:
            self._process = None

    def kill(self) -> None:
        """SIGKILL: a crash, no drain."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    def restart(self) -> ServiceProcess:
        self.stop()
        return self.start()

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    async def open_store(self) -> ConversationStore:
        """This service's store, opened in the test's process; close it after use."""
        return await self.store.open(self.data_dir)

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def token(
        self,
        tenant: str,
        *,
        user: str = "tester",
        scopes: Iterable[str] = DEV_SCOPES,
        ttl: int = 3600,
    ) -> str:
        """A token signed with the dev key this service instance trusts."""
        return load_or_create_dev_key(self.data_dir).mint(tenant, user, scopes, ttl_seconds=ttl)

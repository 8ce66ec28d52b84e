"""Runs the real service, `python -m chat_service`, as a child process.

Each ServiceProcess has its own data directory and port; tests talk to it
over a real gRPC channel, stop it with SIGTERM (the production drain path),
kill it, or restart it on the same data.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from chat_service.auth import DEV_SCOPES, load_or_create_dev_key
from tests.support.net import free_port

ROOT = Path(__file__).resolve().parents[2]


class ServiceProcess:
    def __init__(
        self, data_dir: Path, env: Mapping[str, str] | None = None, *, name: str = "service"
    ) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.extra_env = dict(env or {})
        # Several processes may share one data directory (and store).
        self.log_path = data_dir / f"{name}.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> ServiceProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "SERVICE_HOST": "127.0.0.1",
            "SERVICE_PORT": str(self.port),
            "DATA_DIR": str(self.data_dir),
            "LOG_LEVEL": "INFO",
            "SHUTDOWN_GRACE_SECONDS": "5",
            "SHUTDOWN_DELAY_SECONDS": "0",
            **self.extra_env,
        }
        log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            [sys.executable, "-m", "chat_service"], cwd=ROOT, env=env, stdout=log, stderr=log
        )
        log.close()
        self._wait_serving(timeout)
        return self

    def _wait_serving(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.address) as channel:
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

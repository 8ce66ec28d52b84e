"""The MongoDB the tests run against: nx-27017, a MongoDB wire-protocol
server (SQLite underneath; no genuine mongod installs here), started on a
free loopback port.

MongoServer starts it on a data directory, waits until it answers a ping,
and stops, kills or restarts it on the same data, for outage tests.

As a pytest plugin (`pytest_plugins = ["tests.support.mongo"]` in
tests/conftest.py) this module provides the fixtures
- `mongo_server`: one server for the whole session (the e2e suite's too,
  under CHAT_TEST_STORE=mongo);
- `mongo_uri`: a URI naming a database of the test's own, so that tests
  never see each other's data however they share the server.
"""

from __future__ import annotations

import itertools
import re
import shutil
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pymongo import MongoClient
from pymongo.errors import PyMongoError

from tests.support.local_server import LocalServer

_databases = itertools.count(1)


def nx_27017_executable() -> str:
    """The console script installed beside this interpreter (the venv's)."""
    beside = Path(sys.executable).with_name("nx-27017")
    if beside.is_file():
        return str(beside)
    found = shutil.which("nx-27017")
    if found is None:
        raise RuntimeError("nx-27017 is not installed: pip install -e '.[dev]'")
    return found


class MongoServer(LocalServer):
    name = "nx-27017 server"
    log_name = "nx-27017.log"

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}"

    def uri_for(self, database: str) -> str:
        return f"{self.uri}/{database}"

    def command(self) -> list[str]:
        databases = self.data_dir / "databases"
        databases.mkdir(parents=True, exist_ok=True)
        return [
            nx_27017_executable(),
            "--data-dir",
            str(databases),
            "--host",
            "127.0.0.1",
            "-p",
            str(self.port),
            "--log-file",
            str(self.data_dir / "server.log"),
            "--pid-file",
            str(self.data_dir / "server.pid"),
        ]

    def ready(self) -> bool:
        # The port first (cheap to poll), then one ping through the driver.
        socket.create_connection(("127.0.0.1", self.port), timeout=0.1).close()
        client: MongoClient[dict[str, object]] = MongoClient(
            self.uri, serverSelectionTimeoutMS=2000, directConnection=True
        )
        try:
            client.admin.command("ping")
            return True
        except PyMongoError:
            return False
        finally:
            client.close()


def database_name(test_name: str) -> str:
    """A database name of its own for a test, readable in the data directory
    and valid for both MongoDB and nx-27017 (letters, digits, _ and -, at
    most 64 characters)."""
    readable = re.sub(r"[^A-Za-z0-9_]+", "_", test_name).strip("_")
    return f"t{next(_databases)}_{readable}"[:63]


@pytest.fixture(scope="session")
def mongo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MongoServer]:
    server = MongoServer(tmp_path_factory.mktemp("mongo")).start()
    yield server
    # Killed, not stopped: its data goes with the session, and after a heavy
    # load (the e2e suite's 100,000-message export) nx-27017 can take more
    # than 10 s to exit on SIGTERM, which would fail the last test's teardown.
    server.kill()


@pytest.fixture
def mongo_uri(mongo_server: MongoServer, request: pytest.FixtureRequest) -> str:
    return mongo_server.uri_for(database_name(request.node.name))

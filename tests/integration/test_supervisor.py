"""The supervisor of `serve --workers N` (chat_service/workers.py), a real
process, over stand-in workers (tests/support/stand_in_workers.py) that
drain, hang or fail on cue. The real workers: tests/e2e/test_workers.py."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.net import free_port
from tests.support.service import ROOT
from tests.support.stand_in_workers import IGNORE_SIGCHLD

pytestmark = pytest.mark.store_independent

EXIT_UNAVAILABLE = 69
# Only for a supervisor that would otherwise never exit: a failure, not a pace.
EXIT_WITHIN_SECONDS = 60.0


class Supervisors:
    """Starts supervisors; kills whatever is left of them and their workers after the test."""

    def __init__(self, tmp_path: Path) -> None:
        self._tmp_path = tmp_path
        self._started: list[tuple[subprocess.Popen[str], Path]] = []

    def start(
        self,
        port: int,
        *modes: str,
        kill_after: float = 600.0,
        new_session: bool = False,
        env: dict[str, str] | None = None,
    ) -> tuple[subprocess.Popen[str], Path]:
        ready = self._tmp_path / f"ready-{len(self._started)}"
        ready.mkdir()
        module = "tests.support.stand_in_workers"
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                module,
                "supervise",
                str(port),
                str(kill_after),
                str(ready),
                *modes,
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=new_session,
            env={**os.environ, **(env or {})},
        )
        self._started.append((process, ready))
        return process, ready

    def cleanup(self) -> None:
        for process, ready in self._started:
            if process.poll() is None:
                process.kill()
                process.wait()
            for pid in _pids(ready):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


@pytest.fixture
def supervisors(tmp_path: Path) -> Iterator[Supervisors]:
    started = Supervisors(tmp_path)
    try:
        yield started
    finally:
        started.cleanup()


def _pids(ready: Path) -> list[int]:
    return [int(each.read_text()) for each in sorted(ready.iterdir()) if each.suffix != ".tmp"]


def _when_ready(process: subprocess.Popen[str], ready: Path, count: int) -> list[int]:
    """The workers' pids once all `count` handle their signals."""
    deadline = time.monotonic() + EXIT_WITHIN_SECONDS
    while len(pids := _pids(ready)) < count:
        if process.poll() is not None:
            raise AssertionError(f"the supervisor exited: {_output(process)}")
        if time.monotonic() > deadline:
            raise TimeoutError("the stand-in workers did not start")
        time.sleep(0.02)
    return pids


def _exit_and_output(process: subprocess.Popen[str]) -> tuple[int, str]:
    try:
        code = process.wait(EXIT_WITHIN_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError(f"it never exited: {_output(process)}") from None
    return code, _output(process)


def _output(process: subprocess.Popen[str]) -> str:
    if process.poll() is None:
        process.kill()
    assert process.stdout is not None
    return process.stdout.read()


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def test_a_worker_that_ignores_sigterm_is_killed_once_its_drain_is_overdue(
    supervisors: Supervisors,
) -> None:
    process, ready = supervisors.start(free_port(), "drain", "stubborn", kill_after=0.5)
    pids = _when_ready(process, ready, 2)

    process.send_signal(signal.SIGTERM)
    code, output = _exit_and_output(process)

    assert code == 1  # a worker that had to be killed is a failed drain
    overdue = [line for line in output.splitlines() if "did not stop within" in line]
    assert len(overdue) == 1, output
    assert f"worker 1 (pid {pids[1]}) did not stop within 0.5 s" in overdue[0]
    assert not any(_alive(pid) for pid in pids)


def test_sigint_to_the_whole_process_group_stops_the_set_cleanly(
    supervisors: Supervisors,
) -> None:
    # Ctrl-C in a terminal: the supervisor and every worker get SIGINT, and
    # each worker gets it again from the supervisor.
    process, ready = supervisors.start(free_port(), "drain", "drain", new_session=True)
    pids = _when_ready(process, ready, 2)

    os.killpg(process.pid, signal.SIGINT)
    code, output = _exit_and_output(process)

    assert code == 0, output
    assert "all workers stopped" in output
    assert not any(_alive(pid) for pid in pids)


def test_a_second_set_of_workers_on_the_port_is_refused_while_one_of_the_first_lives(
    supervisors: Supervisors,
) -> None:
    # SO_REUSEPORT would let it join: the same lease owner ids, serving at once.
    port = free_port()
    first, first_ready = supervisors.start(port, "stubborn", "stubborn")
    stuck = _when_ready(first, first_ready, 2)
    first.kill()  # its workers outlive it (they ignore the lifeline here)
    first.wait()

    second, second_ready = supervisors.start(port, "drain", "drain")
    code, output = _exit_and_output(second)

    assert code == EXIT_UNAVAILABLE
    assert (
        "cannot start: another `serve --workers` (or a worker left from one) serves "
        f"port {port}; check SERVICE_PORT"
    ) in output
    assert _pids(second_ready) == []  # refused before starting any

    # The claim goes with the last process holding it.
    for pid in stuck:
        os.kill(pid, signal.SIGKILL)
    while any(_alive(pid) for pid in stuck):
        time.sleep(0.02)
    third, third_ready = supervisors.start(port, "drain", "drain")
    _when_ready(third, third_ready, 2)
    third.send_signal(signal.SIGTERM)
    assert _exit_and_output(third)[0] == 0


@pytest.mark.parametrize("sigchld", ["as Python leaves it", "ignored by the launcher"])
def test_a_worker_that_fails_at_start_fails_the_supervisor_with_its_status(
    supervisors: Supervisors, sigchld: str
) -> None:
    ignored = {IGNORE_SIGCHLD: "1"} if sigchld == "ignored by the launcher" else {}
    process, ready = supervisors.start(free_port(), "drain", "fail", env=ignored)
    code, output = _exit_and_output(process)

    assert code == EXIT_UNAVAILABLE
    assert "worker 1 (pid" in output
    assert "exited on its own (exit status 69)" in output
    assert not any(_alive(pid) for pid in _pids(ready))


# A worker (serve_as_worker) whose drain never ends and holds its event loop.
STUCK_WORKER = """
import asyncio, dataclasses, sys, time
import chat_service.grpc_api.server as server
from chat_service.config import Settings
from chat_service.workers import serve_as_worker

async def stuck(settings, *, stop):
    print("serving", flush=True)
    await stop.wait()
    time.sleep(3600)

server.serve = stuck
settings = dataclasses.replace(Settings.from_env({}), worker_index=0)
asyncio.run(serve_as_worker(settings, int(sys.argv[1]), orphaned_for=0.5))
"""


def test_a_worker_whose_supervisor_is_gone_ends_itself_if_its_drain_is_stuck() -> None:
    # Nobody is left to kill it: it must not hold the port (and its claim) for ever.
    read_end, write_end = os.pipe()  # the test is the supervisor here
    try:
        worker = subprocess.Popen(
            [sys.executable, "-c", STUCK_WORKER, str(read_end)],
            cwd=ROOT,
            pass_fds=(read_end,),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        os.close(read_end)
        assert worker.stdout is not None
        assert worker.stdout.readline().strip() == "serving"
    finally:
        os.close(write_end)  # the supervisor is gone

    code, output = _exit_and_output(worker)

    assert code == -signal.SIGALRM, output
    assert "the supervisor is gone: draining (ending by SIGALRM after 0.5 s)" in output

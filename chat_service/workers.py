"""`python -m chat_service serve --workers N` (or WORKERS=N): N processes on one port.

One process runs one event loop on one core; the service's Python work
(decoding, rules, encoding) does not spread over threads. N processes do:
each worker is a whole service (`serve`, its own event loop, store
connections and background loops) listening on SERVICE_PORT with
SO_REUSEPORT, and the kernel spreads incoming connections over them. A
connection stays with the worker that accepted it (HTTP/2 multiplexes its
calls), so many clients (or an edge with several connections) are what
spreads the load.

What must hold for N > 1 (checked by `check`, a configuration error
otherwise):
- REDIS_URL: conversation locks, rate limits and the
  live bus must be shared, or two workers would serve one conversation at
  once. In-process coordination is for one process; the embedded default
  stays one process and says so when it starts.
- a shared store: MongoDB, or the SQLite file in DATA_DIR. SQLite is safe
  across processes here: WAL, every write one BEGIN IMMEDIATE transaction
  with a busy timeout, migrations re-checked under the write lock
  (adapters/sqlite/); processes sharing DATA_DIR is what
  tests/e2e/test_production_set.py runs (order, replays, streams across
  processes).
- a fixed SERVICE_PORT: with 0 each worker would get a port of its own.

Background loops run in every worker, each under its own owner id
(bootstrap.relay_owner adds `/worker-<i>`): the outbox relay, delivery
sweeps and the webhook inbox worker take leases in the store, as replicas'
do, so N workers share them as N replicas would.

The supervisor (`supervise`, the parent process) only starts and watches:
- it starts the workers as `python -m chat_service serve --workers N
  --worker-index I --lifeline-fd FD`;
- SIGTERM or SIGINT is passed on to every worker, which drains as a lone
  process does (streams end UNAVAILABLE SERVER_DRAINING), and the
  supervisor exits once all have: 0 if every one drained cleanly;
- SIGUSR1 is passed on when the bench counts work (CHAT_BENCH_COUNTERS);
  each worker writes its own file (`worker_counters_path`);
- a worker that exits without being asked (a crash, a failed start) is not
  restarted: the others are drained and the supervisor exits with that
  worker's status (1 if it had none). A restart loop here would hide a
  crashing worker behind a process that looks alive; the process manager
  (Kubernetes, systemd, compose) sees the exit, restarts the whole set
  with its own backoff and counts it, and a failed start keeps its exit
  code (2: configuration, 69: unreachable);
- a worker still running `drain_bound` seconds after it was asked to stop
  (longer than its own drain: SHUTDOWN_DELAY_SECONDS,
  SHUTDOWN_GRACE_SECONDS, closing) is killed (SIGKILL), and the supervisor
  exits 1: a stuck worker must not hold the set, nor the port, for ever;
- the lifeline: a pipe whose write end only the supervisor holds. A worker
  reads EOF on it once the supervisor is gone, even killed with SIGKILL,
  and drains, ending itself (SIGALRM) if that drain outlasts `drain_bound`:
  no worker outlives its supervisor for long;
- the port's claim (`claim_port`): SO_REUSEPORT lets any process of the same
  user join the port, so a second supervisor (or a worker left from an
  earlier run) would silently take part of the connections under the same
  lease owner ids, and both would publish and deliver the same rows. The
  supervisor first binds a name of its own for the port (a Linux abstract
  socket, gone with the last process holding it) and hands it to its
  workers: while any of them lives, another supervisor on the port is
  refused (`PortTaken`, exit 69). A lone process needs none: it binds
  without SO_REUSEPORT, so nothing can join it, nor it them.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import FrameType

from chat_service.bench_counters import ENV_VARIABLE as COUNTERS_VARIABLE
from chat_service.bench_counters import SNAPSHOT_SIGNAL
from chat_service.config import ConfigError, Settings

log = logging.getLogger(__name__)

# Exit status of a supervisor whose worker ended on its own without one.
EXIT_WORKER_FAILED = 1
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Services.close's own bound (chat_service/wiring.py), after the grace.
_CLOSE_SECONDS = 5.0
# Beyond a worker's drain before it is killed: its adapters' closing, a busy machine.
_KILL_MARGIN_SECONDS = 10.0


class PortTaken(Exception):
    """Another supervisor, or a worker of one, serves the port."""


def drain_bound(settings: Settings) -> float:
    """Seconds a worker is given to exit once asked to stop, before SIGKILL."""
    return (
        settings.shutdown_delay_seconds
        + settings.shutdown_grace_seconds
        + _CLOSE_SECONDS
        + _KILL_MARGIN_SECONDS
    )


def claim_port(port: int) -> socket.socket:
    """The claim on `port` for one set of workers (see the module's
    docstring); PortTaken while another set holds it."""
    claim = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        claim.bind(f"\0chat-service-workers:port:{port}")
    except OSError as exc:
        claim.close()
        if exc.errno != errno.EADDRINUSE:
            raise
        raise PortTaken(
            f"another `serve --workers` (or a worker left from one) serves port {port}; "
            "check SERVICE_PORT"
        ) from exc
    return claim


def check(settings: Settings) -> None:
    """ConfigError (one line, naming the setting) if `settings.workers`
    processes cannot share the work safely."""
    if settings.workers == 1:
        return
    if not settings.redis_url:
        raise ConfigError(
            f"WORKERS={settings.workers} (or serve --workers) needs REDIS_URL: worker "
            "processes must share conversation locks, rate limits and "
            "live events; without Redis the service runs as one process (WORKERS=1)"
        )
    if settings.port == 0:
        raise ConfigError(
            f"WORKERS={settings.workers} (or serve --workers) needs a fixed SERVICE_PORT, "
            "not 0: every worker listens on it"
        )
    if settings.metrics_port:
        # Worker i serves its metrics on METRICS_PORT + i: checked here, before
        # any starts, not by the one worker whose port it is (the others
        # would be serving by then, and then be drained again).
        last = settings.metrics_port + settings.workers - 1
        if last > 65535:
            raise ConfigError(
                f"METRICS_PORT {settings.metrics_port} + worker index {settings.workers - 1} "
                "is past 65535: lower METRICS_PORT or the workers"
            )
        if settings.metrics_port <= settings.port <= last:
            raise ConfigError(
                f"METRICS_PORT {settings.metrics_port} to {last} (one per worker) includes "
                "SERVICE_PORT: the workers' metrics ports (METRICS_PORT + 0..N-1) must not"
            )


def worker_counters_path(path: str, index: int) -> str:
    """Where worker `index` writes its bench counters, CHAT_BENCH_COUNTERS being `path`."""
    return f"{path}.worker-{index}"


def worker_command(settings: Settings, index: int, lifeline_fd: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "chat_service",
        "serve",
        "--workers",
        str(settings.workers),
        "--worker-index",
        str(index),
        "--lifeline-fd",
        str(lifeline_fd),
    ]


@dataclass
class _Worker:
    index: int
    process: subprocess.Popen[bytes]


WorkerCommand = Callable[[Settings, int, int], list[str]]


class Supervisor:
    """Starts `settings.workers` workers and waits for them (see the module's docstring).

    `command` and `kill_after` (default: drain_bound) are there for tests
    that stand in for the workers."""

    def __init__(
        self,
        settings: Settings,
        environ: Mapping[str, str],
        *,
        command: WorkerCommand = worker_command,
        kill_after: float | None = None,
    ) -> None:
        self._settings = settings
        self._environ = dict(environ)
        self._command = command
        self._kill_after = drain_bound(settings) if kill_after is None else kill_after
        self._workers: dict[int, _Worker] = {}  # by pid, while running
        self._stopping = False
        self._status = 0

    def run(self) -> int:
        """Until every worker has exited; the exit status for the supervisor.
        PortTaken, before any worker starts, if another set serves the port."""
        claim = claim_port(self._settings.port)
        counting = bool(self._environ.get(COUNTERS_VARIABLE))
        handled = [*_STOP_SIGNALS, *([SNAPSHOT_SIGNAL] if counting else [])]
        previous = {sig: signal.signal(sig, self._on_signal) for sig in handled}
        previous[signal.SIGALRM] = signal.signal(signal.SIGALRM, self._on_drain_overdue)
        # Inherited SIG_IGN (some launchers set it) would reap the workers
        # unseen: os.wait would miss every exit status, then fail.
        previous[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        # Both ends are not inherited (PEP 446) unless passed: only the read
        # end goes to the workers, so EOF there means the supervisor is gone.
        read_end, write_end = os.pipe()
        try:
            try:
                self._start_all(read_end, claim.fileno())
            finally:
                os.close(read_end)
                claim.close()  # the workers hold it from here on
            return self._wait_all()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            # Whatever happened, no worker is left behind.
            for worker in self._workers.values():
                worker.process.kill()
                worker.process.wait()
            os.close(write_end)
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _start_all(self, lifeline_fd: int, claim_fd: int) -> None:
        for index in range(self._settings.workers):
            if self._stopping:  # a stop signal came while starting
                break
            env = dict(self._environ)
            if env.get(COUNTERS_VARIABLE):
                env[COUNTERS_VARIABLE] = worker_counters_path(env[COUNTERS_VARIABLE], index)
            process = subprocess.Popen(
                self._command(self._settings, index, lifeline_fd),
                env=env,
                # The claim is only held, never used: it lives as long as they do.
                pass_fds=(lifeline_fd, claim_fd),
            )
            self._workers[process.pid] = _Worker(index, process)
        pids = ", ".join(str(pid) for pid in self._workers)
        log.info(
            "supervising %d workers on %s:%d (pids %s)",
            len(self._workers),
            self._settings.host,
            self._settings.port,
            pids,
        )
        if self._stopping:
            self._signal_all(signal.SIGTERM)

    def _stop(self) -> None:
        """From now on the workers are stopping: each has `_kill_after` seconds."""
        if not self._stopping:
            self._stopping = True
            signal.setitimer(signal.ITIMER_REAL, self._kill_after)

    def _wait_all(self) -> int:
        while self._workers:
            # Retried after a signal's handler ran (PEP 475).
            pid, wait_status = os.wait()
            worker = self._workers.pop(pid, None)
            if worker is None:
                continue
            code = os.waitstatus_to_exitcode(wait_status)
            worker.process.returncode = code  # reaped here: Popen must not wait again
            self._ended(worker, code)
        log.info("all workers stopped")
        return self._status

    def _ended(self, worker: _Worker, code: int) -> None:
        what = f"worker {worker.index} (pid {worker.process.pid})"
        if not self._stopping:
            log.error("%s exited on its own (%s): stopping the others", what, _described(code))
            self._fail(code)
            self._stop()
            self._signal_all(signal.SIGTERM)
        elif code == 0 or -code in _STOP_SIGNALS:
            # Drained; or ended by the signal passed on before it could set
            # up its drain (it was not serving yet).
            log.info("%s stopped", what)
        else:
            log.error("%s failed while stopping (%s)", what, _described(code))
            self._fail(code)

    def _fail(self, code: int) -> None:
        if self._status == 0:
            self._status = code if code > 0 else EXIT_WORKER_FAILED

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if signum in _STOP_SIGNALS:
            self._stop()
        self._signal_all(signum)

    def _on_drain_overdue(self, signum: int, frame: FrameType | None) -> None:
        # SIGALRM: the wait loop reaps them (a killed worker fails the supervisor).
        for worker in self._workers.values():
            if worker.process.returncode is None:
                log.error(
                    "worker %d (pid %d) did not stop within %g s of being asked: killing it",
                    worker.index,
                    worker.process.pid,
                    self._kill_after,
                )
        self._signal_all(signal.SIGKILL)

    def _signal_all(self, signum: int) -> None:
        for worker in self._workers.values():
            if worker.process.returncode is None:
                # Exited already (reaped by the wait loop): nothing to pass on.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.process.pid, signum)


def _described(code: int) -> str:
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit status {code}"


def supervise(settings: Settings, environ: Mapping[str, str]) -> int:
    """Runs `settings.workers` workers until they all exit; the supervisor's exit status."""
    return Supervisor(settings, environ).run()


async def serve_as_worker(
    settings: Settings, lifeline_fd: int, *, orphaned_for: float | None = None
) -> None:
    """One worker: `serve` until SIGTERM/SIGINT, or until the supervisor is
    gone; then, with nobody left to kill a stuck drain, it ends itself
    `orphaned_for` seconds later (default: drain_bound)."""
    from chat_service.grpc_api.server import serve

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    bound = drain_bound(settings) if orphaned_for is None else orphaned_for

    def supervisor_gone() -> None:
        # Readable only at EOF (the supervisor never writes, it holds the
        # pipe open); once is enough: EOF stays readable.
        loop.remove_reader(lifeline_fd)
        log.warning("the supervisor is gone: draining (ending by SIGALRM after %g s)", bound)
        # SIGALRM's default action ends the process even if the drain holds
        # the event loop (no handler is installed for it in a worker).
        signal.setitimer(signal.ITIMER_REAL, bound)
        stop.set()

    loop.add_reader(lifeline_fd, supervisor_gone)
    try:
        await serve(settings, stop=stop)
    finally:
        loop.remove_reader(lifeline_fd)

"""A server the tests run as a child process on a free loopback port.

Subclasses say how to start theirs (`command`) and how to tell it is
ready (`ready`); the base starts it and waits for readiness (failing with
its log if it exits or never answers), stops it with SIGTERM (a clean
shutdown), kills it with SIGKILL (a crash), or restarts it on the same port
and data, for outage tests.
"""

from __future__ import annotations

import signal
import subprocess
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Self

from tests.support.net import free_port


class LocalServer(ABC):
    #: What the server is, for error messages.
    name = "server"
    #: The log file's name in the data directory.
    log_name = "server.log"

    def __init__(self, data_dir: Path, *, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.log_path = data_dir / self.log_name
        self._process: subprocess.Popen[bytes] | None = None

    @abstractmethod
    def command(self) -> list[str]:
        """The command line that starts the server on self.port."""

    @abstractmethod
    def ready(self) -> bool:
        """Whether the server answers now (called until it does)."""

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 15.0) -> Self:
        """Start (on the same port and data as before, after a stop) and
        return once the server answers."""
        if self.running:
            raise RuntimeError(f"the {self.name} is running already")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(self.command(), stdout=log, stderr=log)
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.kill()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self._process is not None
            if self._process.poll() is not None:
                raise RuntimeError(f"the {self.name} exited at start:\n{self.logs()}")
            try:
                if self.ready():
                    return
            except Exception:  # not answering yet
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the {self.name} is not answering after {timeout}s:\n{self.logs()}"
                )
            time.sleep(0.02)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then wait (SIGKILL if it does not exit in time)."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            # A loaded machine (two test workers beside the MongoDB pass) can
            # keep a server's shutdown (nx-27017 is pure Python) past the
            # timeout: once killed it is down all the same, which is what
            # the callers (outage tests among them) need.
            process.kill()
            process.wait()

    def kill(self) -> None:
        """SIGKILL: the server dies as in a crash."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def pause(self) -> None:
        """SIGSTOP: the server hangs with its connections open (a network
        black hole); `resume` undoes it."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)

    def restart(self) -> Self:
        self.stop()
        return self.start()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

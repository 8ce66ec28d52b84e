"""Child processes the bench starts: servers under test, each with a log file.

The bench measures servers in processes of their own (as they run in
production) while the load generator keeps the bench's event loop to
itself; these helpers start such a process, tell why it died when it does,
and stop it with SIGTERM, the drain path production uses.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

# The project root: children run from it so `python -m bench.echo_server` and
# `python -m chat_service` import this checkout.
ROOT = Path(__file__).resolve().parents[1]

STOP_TIMEOUT_SECONDS = 15.0
_LOG_TAIL_CHARS = 4000


class ChildFailed(RuntimeError):
    """A child did not start, or did not stop cleanly; the message holds its log's tail."""


class Child:
    """A running child process: `python -m <module>`, stderr (and stdout) to a log file."""

    def __init__(self, name: str, process: asyncio.subprocess.Process, log_path: Path) -> None:
        self.name = name
        self.process = process
        self.log_path = log_path

    @classmethod
    async def start(
        cls,
        name: str,
        module: str,
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        capture_stdout: bool = False,
    ) -> Child:
        """Start `python -m module`; with `capture_stdout`, its stdout is a pipe to read."""
        log = await asyncio.to_thread(log_path.open, "ab")
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                module,
                cwd=ROOT,
                env={**os.environ, **(env or {})},
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE if capture_stdout else log,
                stderr=log,
            )
        finally:
            log.close()  # the child holds its own descriptor
        return cls(name, process, log_path)

    @property
    def exited(self) -> bool:
        return self.process.returncode is not None

    async def failure(self, what: str) -> ChildFailed:
        """An error saying `what` went wrong, with the end of the child's log."""
        log = await asyncio.to_thread(self.log_path.read_text, errors="replace")
        status = "" if self.process.returncode is None else f" (exit {self.process.returncode})"
        return ChildFailed(
            f"{self.name}{status}: {what}\n--- log tail ---\n{log[-_LOG_TAIL_CHARS:]}"
        )

    async def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        """SIGTERM and wait; killed, and an error, if it outlives `timeout` or exits non-zero."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            self.kill()
            await self.process.wait()
            raise await self.failure(f"still running {timeout} s after SIGTERM") from None
        if code != 0:
            raise await self.failure("exited with an error when stopped")

    def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()


@asynccontextmanager
async def running_child(
    name: str,
    module: str,
    *,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    capture_stdout: bool = False,
) -> AsyncIterator[Child]:
    """A child that is stopped on the way out; killed instead when the body failed."""
    child = await Child.start(
        name, module, log_path=log_path, env=env, capture_stdout=capture_stdout
    )
    try:
        yield child
    except BaseException:
        child.kill()
        await child.process.wait()
        raise
    await child.stop()


@asynccontextmanager
async def temporary_directory(prefix: str) -> AsyncIterator[Path]:
    path = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix=prefix))
    try:
        yield path
    finally:
        await asyncio.to_thread(shutil.rmtree, path, ignore_errors=True)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, for servers that cannot report the one they bound."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])

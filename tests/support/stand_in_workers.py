"""The supervisor of `serve --workers N` (chat_service/workers.py) over
stand-in workers: small processes that behave as a worker may (drain when
asked, ignore SIGTERM, fail at start), so that what the supervisor does in
each case is seen in seconds, without a service behind it.

    python -m tests.support.stand_in_workers supervise PORT KILL_AFTER READY_DIR MODE...

runs a real Supervisor (one worker per MODE) and exits with its status, or
69 when the port is claimed (with STAND_IN_IGNORE_SIGCHLD set, it starts
with SIGCHLD ignored); each worker writes its pid to READY_DIR/<index>
once its signal handling is in place. Modes:
- drain: exits 0 on SIGTERM or SIGINT, or when the supervisor is gone
  (EOF on the lifeline), as a worker's drain ends;
- stubborn: ignores SIGTERM, SIGINT and the lifeline (a stuck drain);
- fail: exits 69 at once (a failed start).
"""

from __future__ import annotations

import logging
import os
import select
import signal
import sys
from pathlib import Path
from types import FrameType

from chat_service.config import Settings
from chat_service.workers import PortTaken, Supervisor

EXIT_UNAVAILABLE = 69
MODULE = "tests.support.stand_in_workers"
IGNORE_SIGCHLD = "STAND_IN_IGNORE_SIGCHLD"


def supervise(port: str, kill_after: str, ready_dir: str, modes: list[str]) -> int:
    settings = Settings.from_env(
        {
            "SERVICE_HOST": "127.0.0.1",
            "SERVICE_PORT": port,
            "WORKERS": str(len(modes)),
            "REDIS_URL": "redis://127.0.0.1:1",
        }
    )

    def command(settings: Settings, index: int, lifeline_fd: int) -> list[str]:
        mode = modes[index]
        return [
            sys.executable,
            "-m",
            MODULE,
            "worker",
            mode,
            str(index),
            str(lifeline_fd),
            ready_dir,
        ]

    logging.basicConfig(level=logging.INFO, format="supervisor %(levelname)s %(message)s")
    if os.environ.get(IGNORE_SIGCHLD):  # as started by a launcher that ignores it
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    supervisor = Supervisor(settings, os.environ, command=command, kill_after=float(kill_after))
    try:
        return supervisor.run()
    except PortTaken as exc:
        print(f"cannot start: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE


def worker(mode: str, index: str, lifeline_fd: str, ready_dir: str) -> int:
    if mode == "fail":
        return EXIT_UNAVAILABLE
    if mode == "stubborn":
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
        _ready(ready_dir, index)
        while True:
            signal.pause()

    def drained(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, drained)
    _ready(ready_dir, index)
    select.select([int(lifeline_fd)], [], [])  # readable at EOF: the supervisor is gone
    return 0


def _ready(ready_dir: str, index: str) -> None:
    written = Path(ready_dir, f"{index}.tmp")
    written.write_text(str(os.getpid()))
    written.rename(Path(ready_dir, index))


if __name__ == "__main__":
    role, *arguments = sys.argv[1:]
    if role == "supervise":
        port, kill_after, ready_dir, *modes = arguments
        sys.exit(supervise(port, kill_after, ready_dir, modes))
    sys.exit(worker(*arguments))

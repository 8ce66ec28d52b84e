"""What a server under load spent: its CPU time, and the service's work counters.

CPU time is the kernel's account of the whole process (every thread, those
that have exited too): utime + stime in /proc/<pid>/stat, in clock ticks
(proc(5), https://man7.org/linux/man-pages/man5/proc.5.html). It is blind to
the other load on a shared machine, which is why the bench reports it per
call beside the throughput ratios.

The counters are the chat service's own (chat_service/bench_counters.py):
started with CHAT_BENCH_COUNTERS naming a file, it writes its totals there
on SIGUSR1. Only a server started that way is ever signalled: SIGUSR1's
default action would end any other.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bench.children import ChildFailed
from chat_service.bench_counters import SNAPSHOT_SIGNAL

_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")
COUNTERS_TIMEOUT_SECONDS = 5.0
_POLL_SECONDS = 0.001


class ProbeFailed(ChildFailed):
    """A server under test did not answer for what it spent."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    cpu_seconds: float
    counters: Mapping[str, int] | None  # None: the server keeps none (the echo)


def cpu_seconds(pid: int) -> float:
    """utime + stime of process `pid` so far, in seconds."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        text = stat.read()
    # Field 2, the command name, is in parentheses and may hold spaces and
    # parentheses itself: count the fields from the last ')'.
    fields = text[text.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / _TICKS_PER_SECOND


@dataclass(frozen=True, slots=True)
class ServerProbe:
    """Reads what the server process `pid` has spent so far."""

    name: str
    pid: int
    counters_path: Path | None = None  # set only for a service started with counters on

    async def snapshot(self) -> Snapshot:
        counters = None if self.counters_path is None else await self._counters(self.counters_path)
        return Snapshot(cpu_seconds(self.pid), counters)

    async def _counters(self, path: Path) -> dict[str, int]:
        _ask(self.pid, path)
        deadline = time.monotonic() + COUNTERS_TIMEOUT_SECONDS
        while (text := _written(path)) is None:
            if time.monotonic() > deadline:
                raise ProbeFailed(
                    f"{self.name}: wrote no counters within {COUNTERS_TIMEOUT_SECONDS} s of SIGUSR1"
                )
            await asyncio.sleep(_POLL_SECONDS)
        written = json.loads(text)
        if written.get("pid") != self.pid:
            raise ProbeFailed(f"{self.name}: {path} holds another process's counters")
        return {str(name): int(value) for name, value in written["counters"].items()}


# Synchronous file calls on the loop, on purpose: a stat, or a read of a few
# hundred bytes, costs less than a hop to a thread and back, and they happen
# twice per run while the load is on.


def _ask(pid: int, path: Path) -> None:
    """Have the service write its totals to `path` (which the previous answer leaves)."""
    path.unlink(missing_ok=True)
    os.kill(pid, SNAPSHOT_SIGNAL)


def _written(path: Path) -> str | None:
    """The answer, once the service has written it (it renames it into place whole)."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None

"""What a server under load spent: its CPU time, and the service's work counters.

CPU time is the kernel's account of the whole process (every thread, those
that have exited too): utime + stime in /proc/<pid>/stat, in clock ticks
(proc(5), https://man7.org/linux/man-pages/man5/proc.5.html), summed over
the process and its live descendants (/proc/<pid>/task/<tid>/children), with
the time of the children they have reaped (cutime + cstime): a service
started with WORKERS=N is a supervisor and N worker processes. It
is blind to the other load on a shared machine, which is why the bench
reports it per call beside the throughput ratios.

The counters are the chat service's own (chat_service/bench_counters.py):
started with CHAT_BENCH_COUNTERS naming a file, it writes its totals there
on SIGUSR1. Only a server started that way is ever signalled: SIGUSR1's
default action would end any other. A supervisor of N workers passes the
signal on, and each worker writes its own file
(chat_service.workers.worker_counters_path): the probe sums them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bench.children import ChildFailed
from chat_service.bench_counters import SNAPSHOT_SIGNAL
from chat_service.workers import worker_counters_path

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
    """CPU time of process `pid` and its descendants so far, in seconds: those
    alive now, and those it (or they) reaped, which leave their time to the
    parent that waited for them (cutime + cstime); so a worker that exits
    mid-run neither takes its time away nor stops the probe."""
    total = _own_cpu_seconds(pid)
    for each in _with_descendants(pid)[1:]:
        with contextlib.suppress(FileNotFoundError):  # exited and reaped meanwhile
            total += _own_cpu_seconds(each)
    return total


def _with_descendants(pid: int) -> list[int]:
    found, index = [pid], 0
    while index < len(found):
        found.extend(_children(found[index]))
        index += 1
    return found


def _children(pid: int) -> list[int]:
    children: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:  # exited meanwhile
        return children
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children", encoding="ascii") as listed:
                children.extend(int(child) for child in listed.read().split())
        except FileNotFoundError:
            continue
    return children


def _own_cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        text = stat.read()
    # Field 2, the command name, is in parentheses and may hold spaces and
    # parentheses itself: count the fields from the last ')'.
    fields = text[text.rindex(")") + 2 :].split()
    # Fields 14 to 17 of proc(5): utime, stime, and those of the children it waited for.
    return sum(int(each) for each in fields[11:15]) / _TICKS_PER_SECOND


@dataclass(frozen=True, slots=True)
class ServerProbe:
    """Reads what the server process `pid` has spent so far."""

    name: str
    pid: int
    counters_path: Path | None = None  # set only for a service started with counters on
    workers: int = 1  # WORKERS: more than one, `pid` is their supervisor

    async def snapshot(self) -> Snapshot:
        counters = None if self.counters_path is None else await self._counters(self.counters_path)
        return Snapshot(cpu_seconds(self.pid), counters)

    def _counter_files(self, path: Path) -> list[Path]:
        if self.workers == 1:
            return [path]
        return [Path(worker_counters_path(str(path), i)) for i in range(self.workers)]

    async def _counters(self, path: Path) -> dict[str, int]:
        files = self._counter_files(path)
        for each in files:
            each.unlink(missing_ok=True)  # the previous answer
        os.kill(self.pid, SNAPSHOT_SIGNAL)
        totals: dict[str, int] = {}
        writers: set[int] = set()
        deadline = time.monotonic() + COUNTERS_TIMEOUT_SECONDS
        for each in files:
            while (text := _written(each)) is None:
                if time.monotonic() > deadline:
                    raise ProbeFailed(
                        f"{self.name}: wrote no counters to {each.name} within "
                        f"{COUNTERS_TIMEOUT_SECONDS} s of SIGUSR1"
                    )
                await asyncio.sleep(_POLL_SECONDS)
            written = json.loads(text)
            writer = written.get("pid")
            if self.workers == 1 and writer != self.pid:
                raise ProbeFailed(f"{self.name}: {each} holds another process's counters")
            if self.workers > 1 and (writer in writers or writer not in _children(self.pid)):
                raise ProbeFailed(f"{self.name}: {each} holds no worker's counters of its own")
            writers.add(writer)
            for name, value in written["counters"].items():
                totals[str(name)] = totals.get(str(name), 0) + int(value)
        return totals


# Synchronous file calls on the loop, on purpose: a stat, or a read of a few
# hundred bytes, costs less than a hop to a thread and back, and they happen
# twice per run while the load is on.


def _written(path: Path) -> str | None:
    """The answer, once the service has written it (it renames it into place whole)."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None

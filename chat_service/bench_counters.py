"""Work counters for the benchmark (`make bench`); off unless CHAT_BENCH_COUNTERS is set.

The figures issue 13 drives down are counts per call (SQL statements,
commits, hops onto the store's threads, JSON encodes): throughput on a shared
machine swings by 15%, these do not. When CHAT_BENCH_COUNTERS names a file
at start-up, `python -m chat_service` counts, and on SIGUSR1 writes the totals
so far to that file as JSON (written beside it, then renamed, so a reader
never sees half of it). The bench signals at both edges of its measured
window and divides the difference by the calls it made in between.

Off (the default, and in production: nothing sets the variable) nothing is
installed, and each hook in the store costs one attribute check
(`if bench_counters.enabled:`). On, every count takes a lock (they come from
the store's threads as well as the event loop): about a microsecond per
count, under 2% of a SendMessage, and `make bench BENCH_ARGS=--no-counters`
measures without them.

What is counted, and where:
- `sql_statements`: every statement SQLite runs on the store's connections
  (`sqlite3.Connection.set_trace_callback`, set in adapters/sqlite/connections.py;
  BEGIN, SAVEPOINT and COMMIT included, `executemany` once per row);
- `commits`: transactions committed by the SQLite writer, and MongoDB
  `commitTransaction` commands;
- `store_reads`, `store_writes`: units of work handed to the SQLite store's
  reader pool and writer thread (each a thread hop there and back);
- `mongo_commands`: commands the MongoDB driver sends (a global
  `pymongo.monitoring` listener, registered before the store's client exists);
  by name too (`mongo_commands.find`, ...), as SQL statements are by their
  first word (`sql_statements.SELECT`, ...);
- `json_encodes`, `json_decodes`: JSON texts made and read anywhere in the
  process: every call of `json.dumps` / `json.loads` (the module's functions
  are wrapped, so every call site that spells `json.dumps(...)` counts), and
  of adapters/storage/json_text.py, the stores' msgspec encoder and decoder,
  which count themselves (`count_json`). Code that moves to another encoder
  must count its calls here too, or the figure goes blind;
  tests/integration/test_bench_smoke.py fails when it reads zero. Also by
  the function that wants the text (`json_encodes.rows.message_params`, ...),
  so that the report says which ones to drive down.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from types import FrameType
from typing import Any

ENV_VARIABLE = "CHAT_BENCH_COUNTERS"
SNAPSHOT_SIGNAL = signal.SIGUSR1

SQL_STATEMENTS = "sql_statements"
COMMITS = "commits"
STORE_READS = "store_reads"
STORE_WRITES = "store_writes"
MONGO_COMMANDS = "mongo_commands"
JSON_ENCODES = "json_encodes"
JSON_DECODES = "json_decodes"
NAMES = (
    SQL_STATEMENTS,
    COMMITS,
    STORE_READS,
    STORE_WRITES,
    MONGO_COMMANDS,
    JSON_ENCODES,
    JSON_DECODES,
)

# Read by the hooks on every call: a plain module-level bool, so that off it
# costs one attribute load and a branch.
enabled = False

_counts: dict[str, int] = dict.fromkeys(NAMES, 0)
# Re-entrant: the snapshot takes it in a signal handler on the main thread,
# which may have been interrupted inside `count` holding it.
_lock = threading.RLock()


def count(name: str, amount: int = 1) -> None:
    """Add to a counter (a new name starts at 0); call it only under
    `if bench_counters.enabled:`."""
    with _lock:
        _counts[name] = _counts.get(name, 0) + amount


def count_sql(statement: str) -> None:
    """sqlite3's trace callback: one call per statement run, also counted by
    its first word (`sql_statements.SELECT`, `sql_statements.COMMIT`, ...)."""
    words = statement.split(None, 1)
    verb = words[0].upper() if words else "?"
    with _lock:
        _counts[SQL_STATEMENTS] += 1
        key = f"{SQL_STATEMENTS}.{verb}"
        _counts[key] = _counts.get(key, 0) + 1


def count_json(name: str) -> None:
    """One JSON encode or decode (JSON_ENCODES, JSON_DECODES), also counted
    by the function it is for: the first caller outside the JSON plumbing.
    Call it only under `if bench_counters.enabled:`."""
    frame = sys._getframe(1)
    while frame.f_back is not None and (
        frame.f_globals.get("__name__") in _JSON_PLUMBING or frame.f_code.co_name in _JSON_HELPERS
    ):
        frame = frame.f_back
    module = str(frame.f_globals.get("__name__", "?")).rpartition(".")[2]
    site = f"{name}.{module}.{frame.f_code.co_name}"
    with _lock:
        _counts[name] += 1
        _counts[site] = _counts.get(site, 0) + 1


# Modules and helpers that only pass a document on to the encoder: the count
# goes to their caller.
_JSON_PLUMBING = frozenset({__name__, "json", "adapters.storage.json_text"})
_JSON_HELPERS = frozenset({"dump_json", "load_json", "_json_object"})


def snapshot() -> dict[str, int]:
    """The totals so far, each total with its break-down (never half of a count_sql)."""
    with _lock:
        return dict(_counts)


def install_from_env(environ: Mapping[str, str]) -> None:
    """Start counting if CHAT_BENCH_COUNTERS names a file; call once, on the main thread,
    before the store opens (its connections and client pick the hooks up then)."""
    path = environ.get(ENV_VARIABLE, "")
    if path:
        install(Path(path))


def install(path: Path) -> None:
    global enabled
    if enabled:
        return
    enabled = True
    plain_dumps = _count_json()
    _count_mongo_commands()

    def write_totals(signum: int, frame: FrameType | None) -> None:
        _write(path, plain_dumps({"pid": os.getpid(), "counters": snapshot()}))

    # A Python-level handler runs on the main thread between bytecodes (the
    # event loop's wake-up fd gets it out of its poll), so it may do file I/O.
    # https://docs.python.org/3/library/signal.html#execution-of-python-signal-handlers
    signal.signal(SNAPSHOT_SIGNAL, write_totals)


def _write(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def _count_json() -> Callable[..., str]:
    """Wrap json.dumps and json.loads; returns the unwrapped dumps."""
    plain_dumps = json.dumps
    plain_loads = json.loads

    def dumps(obj: Any, *args: Any, **kwargs: Any) -> str:
        count_json(JSON_ENCODES)
        return plain_dumps(obj, *args, **kwargs)

    def loads(s: str | bytes | bytearray, *args: Any, **kwargs: Any) -> Any:
        count_json(JSON_DECODES)
        return plain_loads(s, *args, **kwargs)

    json.dumps = dumps
    json.loads = loads
    return plain_dumps


def _count_mongo_commands() -> None:
    # Imported here: only a counting process pays for it at start-up.
    from pymongo import monitoring

    class CommandCounter(monitoring.CommandListener):
        def started(self, event: monitoring.CommandStartedEvent) -> None:
            count(MONGO_COMMANDS)
            count(f"{MONGO_COMMANDS}.{event.command_name}")
            if event.command_name == "commitTransaction":
                count(COMMITS)

        def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
            pass

        def failed(self, event: monitoring.CommandFailedEvent) -> None:
            pass

    # Global listeners are copied into each client made after this call.
    # https://pymongo.readthedocs.io/en/stable/api/pymongo/monitoring.html
    monitoring.register(CommandCounter())

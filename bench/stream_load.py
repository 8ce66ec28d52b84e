"""Closed-loop load over streams: N callers, each doing round trips on a stream of its own.

The callers and the counting are `run_load`'s: a "call" is one round trip
on the caller's stream. A caller opens its stream on its first round trip
(so the opening lands in the warm-up, as a SendMessage caller's new
conversation does) and keeps it for the whole run. A failed round trip
leaves the stream in an unknown state (a late reply would be read as the
next round trip's), so the caller cancels it and opens a new one next time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from bench.load import Call, LoadResult, LoadSettings, run_load
from bench.probes import ServerProbe


class StreamSession(Protocol):
    """One bidirectional stream and the round trips a caller makes on it."""

    async def open(self) -> None:
        """Whatever the protocol asks before the first round trip."""

    async def round_trip(self) -> None:
        """Send one message and await its answer; raise on anything else."""

    def cancel(self) -> None:
        """End the stream now, whatever state it is in."""


# Makes a new session (a new stream) for caller number `i`.
SessionFactory = Callable[[int], StreamSession]


async def run_stream_load(
    new_session: SessionFactory, settings: LoadSettings, probe: ServerProbe | None = None
) -> LoadResult:
    """`run_load` with one stream per caller; every stream is cancelled when it returns."""
    # Caller index -> its open session. Held here only, so that once they are
    # cancelled and dropped the calls are freed: a live call object keeps its
    # connection open after its channel is closed.
    sessions: dict[int, StreamSession] = {}

    def caller_for(index: int) -> Call:
        async def call() -> None:
            session = sessions.get(index)
            try:
                if session is None:
                    session = sessions[index] = new_session(index)
                    await session.open()
                await session.round_trip()
            except BaseException:
                if session is not None:
                    session.cancel()
                    del sessions[index]
                raise

        return call

    try:
        return await run_load(caller_for, settings, probe)
    finally:
        for session in sessions.values():
            session.cancel()
        sessions.clear()

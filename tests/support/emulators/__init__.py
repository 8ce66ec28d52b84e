"""Local emulators of the platforms' HTTP APIs, for adapter tests.

Each emulator is a real HTTP server (aiohttp) on a free loopback port: the
connector under test talks to it with its real client, over a real socket.
What they share lives here:

- `EmulatorServer`: start/stop an aiohttp application on 127.0.0.1 (the
  socket is bound before the site starts, so no other process can take the
  port in between), with an event that ends hung calls at stop.
- `RecordedCall`: what the emulator received, for assertions.
- `Fault` and `Faults`: fault injection, "the next N calls answer this way"
  (a status with a body and headers, or a hang beyond the client's timeout);
  `throttled` and `hung` make the two every platform has.
- `PlatformEmulator`: the base of an emulator: its server, its `calls` and
  its `faults`, and the steps each handler takes (record the call, answer
  with the fault queued for it if any, else record and send its own answer).
- `running`: an emulator started for a `with` block (a test's, a fixture's).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Protocol, Self, TypeVar

from aiohttp import web


@dataclass(frozen=True, slots=True)
class RecordedCall:
    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: Any  # the parsed JSON body, or None
    raw: bytes
    at: float  # the emulator's clock when the call arrived
    status: int = 0  # what it answered
    answer: Any = None  # the JSON it answered with, if any

    @property
    def bearer(self) -> str:
        scheme, _, token = self.headers.get("Authorization", "").partition(" ")
        return token if scheme.lower() == "bearer" else ""


@dataclass(frozen=True, slots=True)
class Fault:
    """One injected answer: `status` with `body` (JSON) or `text`, and
    `headers`; with `hang` > 0 the call is held that long first (or until
    the emulator stops), beyond the client's timeout. `PASS` (status 0)
    lets a call through untouched, to fail a later one."""

    status: int = 500
    body: Mapping[str, Any] | None = None
    text: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    hang: float = 0.0

    def response(self) -> web.Response:
        if self.body is not None:
            return web.json_response(dict(self.body), status=self.status, headers=self.headers)
        return web.Response(status=self.status, text=self.text, headers=self.headers)


PASS = Fault(status=0)


def throttled(body: Mapping[str, Any], retry_after: str | None) -> Fault:
    """HTTP 429 with the platform's `body`, and `Retry-After` unless None."""
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return Fault(status=429, body=body, headers=headers)


def hung(seconds: float, *, status: int = 503, body: Mapping[str, Any] | None = None) -> Fault:
    """No answer for `seconds` (or until the emulator stops), then `status`:
    a timeout for a client that waits less."""
    return Fault(status=status, body=body, text="" if body is not None else "late", hang=seconds)


class Faults:
    """The faults queued for the next calls, in order."""

    def __init__(self) -> None:
        self._queue: deque[Fault] = deque()

    def add(self, fault: Fault, times: int = 1) -> None:
        self._queue.extend([fault] * times)

    def take(self) -> Fault | None:
        return self._queue.popleft() if self._queue else None

    def clear(self) -> None:
        self._queue.clear()

    def __len__(self) -> int:
        return len(self._queue)


class EmulatorServer:
    """An aiohttp application served on a loopback port."""

    def __init__(self, app: web.Application) -> None:
        self._app = app
        self._runner: web.AppRunner | None = None
        self._port = 0
        self.stopping = asyncio.Event()

    @property
    def origin(self) -> str:
        if not self._port:
            raise RuntimeError("the emulator is not started")
        return f"http://127.0.0.1:{self._port}"

    async def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self._port = int(sock.getsockname()[1])
        self._runner = web.AppRunner(self._app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()

    async def stop(self) -> None:
        self.stopping.set()  # hung calls answer now
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def hold(self, seconds: float) -> None:
        """Hold a call `seconds`, or until the emulator stops."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), seconds)


async def read_json(request: web.Request) -> tuple[bytes, Any]:
    """The raw body and its JSON (None when empty or not JSON)."""
    raw = await request.read()
    if not raw:
        return raw, None
    try:
        return raw, json.loads(raw)
    except ValueError:
        return raw, None


class PlatformEmulator:
    """What each platform emulator is built on: its aiohttp application
    served on a loopback port, every call recorded in `calls` (with what it
    was answered), and `faults` for the next calls. `base_setting` names the
    service setting that points at the emulator's `base_url` (its origin
    and `base_path`)."""

    base_setting: ClassVar[str] = ""
    base_path: ClassVar[str] = ""

    def __init__(
        self, app: web.Application, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._clock = clock
        self.faults = Faults()
        self.calls: list[RecordedCall] = []
        self._server = EmulatorServer(app)

    async def start(self) -> Self:
        await self._server.start()
        return self

    async def stop(self) -> None:
        await self._server.stop()

    @property
    def origin(self) -> str:
        return self._server.origin

    @property
    def base_url(self) -> str:
        """What the service's `base_setting` is set to."""
        return self.origin + self.base_path

    @property
    def service_environment(self) -> dict[str, str]:
        """The settings that point a service at this emulator."""
        return {self.base_setting: self.base_url}

    def let_through(self, times: int = 1) -> None:
        """The next `times` calls are answered normally (to fail a later one)."""
        self.faults.add(PASS, times)

    # ------------------------------------------------- for the handlers

    def _record(
        self,
        request: web.Request,
        *,
        raw: bytes,
        body: Any,
        query: Mapping[str, str] | None = None,
    ) -> int:
        """Records the call (`query`: the request's, unless the handler
        records something else there); its index in `calls`."""
        self.calls.append(
            RecordedCall(
                method=request.method,
                path=request.path,
                query=dict(request.query) if query is None else query,
                headers=dict(request.headers),
                body=body,
                raw=raw,
                at=self._clock(),
            )
        )
        return len(self.calls) - 1

    async def _arrived(
        self, request: web.Request, *, query: Mapping[str, str] | None = None
    ) -> tuple[int, Any, web.Response | None]:
        """Reads and records a JSON call: its index in `calls`, its parsed
        body, and the answer of the fault queued for it (None: none is)."""
        raw, body = await read_json(request)
        index = self._record(request, raw=raw, body=body, query=query)
        return index, body, await self._injected(index)

    def _answered(self, index: int, status: int, answer: Any = None) -> None:
        self.calls[index] = replace(self.calls[index], status=status, answer=answer)

    async def _injected(self, index: int, faults: Faults | None = None) -> web.Response | None:
        """The answer of the fault queued for this call (after its hang),
        or None to answer it normally."""
        fault = (self.faults if faults is None else faults).take()
        if fault is None or not fault.status:
            return None
        if fault.hang:
            await self._server.hold(fault.hang)
        self._answered(index, fault.status, fault.body)
        return fault.response()

    def _json(
        self,
        index: int,
        answer: Mapping[str, Any],
        *,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
    ) -> web.Response:
        """Answers the call `index` with `answer` as JSON, as recorded."""
        self._answered(index, status, answer)
        return web.json_response(dict(answer), status=status, headers=headers)


class _Emulator(Protocol):
    async def start(self) -> Any: ...

    async def stop(self) -> None: ...


EmulatorT = TypeVar("EmulatorT", bound=_Emulator)


@contextlib.asynccontextmanager
async def running(emulator: EmulatorT) -> AsyncIterator[EmulatorT]:
    """`emulator`, started, then stopped when the block ends."""
    await emulator.start()
    try:
        yield emulator
    finally:
        await emulator.stop()

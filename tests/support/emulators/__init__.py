"""Local emulators of the platforms' HTTP APIs, for adapter tests.

Each emulator is a real HTTP server (aiohttp) on a free loopback port: the
connector under test talks to it with its real client, over a real socket.
What they share lives here:

- `EmulatorServer`: start/stop an aiohttp application on 127.0.0.1 (the
  socket is bound before the site starts, so no other process can take the
  port in between), with an event that ends hung calls at stop.
- `RecordedCall`: what the emulator received, for assertions.
- `Fault` and `Faults`: fault injection, "the next N calls answer this way"
  (a status with a body and headers, or a hang beyond the client's timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

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

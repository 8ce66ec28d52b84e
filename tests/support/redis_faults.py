"""A Redis client that fails on purpose, for fault-injection tests against a
real server: the server and the scripts are real, only chosen replies are
lost.

Faults are armed per Lua script (matched by its SHA1, which is how
redis-py's registered scripts call EVALSHA) and fire once each:
- `fail_next(script)`: the command never reaches Redis (a connection error);
- `fail_next(script, after_running=True)`: Redis runs the script, the reply
  is lost (a timeout after the fact, as when the connection drops mid-reply);
- `gate_next(script)`: the command waits until the test opens the gate.

The error is raised around redis-py's own retry, as an error that outlasted
that retry would be.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from adapters.redis.client import connect_redis


@dataclass
class Gate:
    reached: asyncio.Event = field(default_factory=asyncio.Event)
    opened: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class _Fault:
    sha: str
    after_running: bool = False
    gate: Gate | None = None


class FaultyRedis(Redis):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._faults: list[_Fault] = []
        self.fired = 0

    def fail_next(self, script: str, *, after_running: bool = False) -> None:
        self._faults.append(_Fault(script_sha(script), after_running=after_running))

    def gate_next(self, script: str) -> Gate:
        gate = Gate()
        self._faults.append(_Fault(script_sha(script), gate=gate))
        return gate

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        fault = self._take(args)
        if fault is None:
            return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]
        self.fired += 1
        if fault.gate is not None:
            fault.gate.reached.set()
            await fault.gate.opened.wait()
            return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]
        if not fault.after_running:
            raise RedisConnectionError("injected: connection lost before sending")
        await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]
        raise RedisTimeoutError("injected: the reply was lost")

    def _take(self, args: tuple[Any, ...]) -> _Fault | None:
        if len(args) < 2 or str(args[0]).upper() != "EVALSHA":
            return None
        for fault in self._faults:
            if fault.sha == args[1]:
                self._faults.remove(fault)
                return fault
        return None


def faulty_client(url: str, *, max_connections: int = 20) -> FaultyRedis:
    """A FaultyRedis on a pool built as the service builds its own."""
    pool = connect_redis(url, max_connections=max_connections).connection_pool
    client = FaultyRedis.from_pool(pool)  # closing the client closes the pool
    assert isinstance(client, FaultyRedis)
    return client


def script_sha(script: str) -> str:
    return hashlib.sha1(script.encode(), usedforsecurity=False).hexdigest()

"""What waits for a stream's client, and how its own typing goes out.

Typing indicators are cheap and ephemeral: only the latest state matters.
So they never take a slot of a stream's bounded buffer (a slow reader is
never ended because of them), a newer state replaces an undelivered older
one, and each stream publishes at most one per interval.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

from chat_service.domain.enums import MessageRole
from chat_service.domain.live import TypingChanged

T = TypeVar("T")


class StreamBuffer(Generic[T]):
    """At most `size` items for a slow reader, plus the latest undelivered
    typing state per role (the conversation's user, say) outside that bound:
    at most one per role, so the whole buffer stays bounded."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: deque[T] = deque()
        self._typing: dict[MessageRole, TypingChanged] = {}
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()

    def offer(self, item: T) -> bool:
        """Queue `item` unless the buffer is full (then False)."""
        if len(self._items) >= self._size:
            return False
        self._items.append(item)
        self._readable.set()
        return True

    async def put(self, item: T) -> None:
        """Queue `item`, waiting for room (backpressure on the client's own
        frames: their answers wait until it reads)."""
        while len(self._items) >= self._size:
            self._writable.clear()
            await self._writable.wait()
        self._items.append(item)
        self._readable.set()

    def typing(self, event: TypingChanged) -> None:
        """The latest typing state of `event.role` replaces an undelivered one."""
        self._typing.pop(event.role, None)  # the newest goes last
        self._typing[event.role] = event
        self._readable.set()

    def wake(self) -> None:
        """Return a waiting `get` with None (the stream has news for its reader)."""
        self._readable.set()

    async def get(self) -> T | TypingChanged | None:
        """The next item (regular items first), or None when woken with nothing."""
        if not self._items and not self._typing:
            self._readable.clear()
            await self._readable.wait()
        if self._items:
            item = self._items.popleft()
            self._writable.set()
            return item
        if self._typing:
            role = next(iter(self._typing))
            return self._typing.pop(role)
        return None


class TypingThrottle:
    """One stream's typing indicators: the first goes out at once; within the
    next `interval` seconds nothing does, and at its end the latest state
    received meanwhile goes out, unless it is the state last published. So at
    most one indicator per interval, and the last word always arrives, however
    fast the client flips between true and false."""

    def __init__(self, interval: float, publish: Callable[[bool], None]) -> None:
        self._interval = interval
        self._publish = publish
        self._published: bool | None = None
        self._quiet_until = float("-inf")  # event loop time
        self._latest: bool | None = None
        self._timer: asyncio.TimerHandle | None = None

    def set(self, typing: bool) -> None:
        if self._timer is not None:
            self._latest = typing  # the pending publish will carry it
            return
        loop = asyncio.get_running_loop()
        if loop.time() >= self._quiet_until:
            self._emit(typing)
            return
        self._latest = typing
        self._timer = loop.call_at(self._quiet_until, self._flush)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _flush(self) -> None:
        self._timer = None
        latest, self._latest = self._latest, None
        if latest is not None and latest != self._published:
            self._emit(latest)

    def _emit(self, typing: bool) -> None:
        self._published = typing
        self._quiet_until = asyncio.get_running_loop().time() + self._interval
        self._publish(typing)

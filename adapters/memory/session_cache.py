"""SessionCache inside one process: bounded dicts with expiry."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

from chat_service.domain.model import ConversationState
from chat_service.ports import SESSION_TTL_SECONDS, CachedState

_V = TypeVar("_V")


class _Expiring(Generic[_V]):
    """At most `size` entries, each gone `ttl` seconds after it was last used;
    the least recently used goes first when full."""

    def __init__(self, size: int, ttl: float, clock: Callable[[], float]) -> None:
        self._entries: OrderedDict[str, tuple[float, _V]] = OrderedDict()
        self._size = size
        self._ttl = ttl
        self._clock = clock

    def get(self, key: str) -> _V | None:
        found = self._entries.get(key)
        if found is None:
            return None
        expires, value = found
        now = self._clock()
        if expires <= now:
            del self._entries[key]
            return None
        self._entries[key] = (now + self._ttl, value)
        self._entries.move_to_end(key)
        return value

    def put(self, key: str, value: _V) -> None:
        self._entries[key] = (self._clock() + self._ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)


class InProcessSessionCache:
    def __init__(
        self,
        *,
        size: int = 100_000,
        ttl: float = SESSION_TTL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sessions: _Expiring[dict[str, Any]] = _Expiring(size, ttl, clock)
        self._states: _Expiring[CachedState] = _Expiring(size, ttl, clock)

    async def get_session(self, tenant_id: str, session_id: str) -> dict[str, Any] | None:
        found = self._sessions.get(f"{tenant_id}/{session_id}")
        return None if found is None else dict(found)

    async def put_session(
        self, tenant_id: str, session_id: str, session: Mapping[str, Any]
    ) -> None:
        self._sessions.put(f"{tenant_id}/{session_id}", dict(session))

    async def get_conversation_state(
        self, tenant_id: str, conversation_id: str
    ) -> CachedState | None:
        return self._states.get(f"{tenant_id}/{conversation_id}")

    async def put_conversation_state(
        self, tenant_id: str, conversation_id: str, state: ConversationState, *, version: int
    ) -> bool:
        key = f"{tenant_id}/{conversation_id}"
        cached = self._states.get(key)
        if cached is not None and cached.version > version:
            return False
        self._states.put(key, CachedState(version, state))
        return True

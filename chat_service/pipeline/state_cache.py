"""Writes each committed conversation's state through to the session cache,
where the rest of the platform reads it without asking the store.

Best effort, off the caller's path: the cache refuses a state older than the
one it has (puts from several processes may arrive out of order), and a put
that fails (the cache is down) leaves an entry that expires.

Bounded: a commit does not start a put of its own. Commits wait in a backlog
keyed by conversation, where a newer commit replaces the waiting one (only
the newest state is worth writing), and a few workers (`workers`) take them
in order. Each put holds a connection of the cache's bounded pool for as
long as the cache takes to answer, so a slow or stalled cache costs at most
`workers` connections, not one per commit. Past `max_pending` conversations
the oldest waiting one is dropped (counted in `dropped`): its entry stays
older until the next commit or its TTL, which a reader that knows the
current version can tell.

Only changed states are put. Most commits leave the state as it was (an end
user's message is written before the engine answers; a delivery status
moves), and the cache then already holds it: a commit whose state is the
very object this feed last put for its conversation (states are frozen; an
engine's new state is a new object) is not put again. So the entry's
version is the one its state was last put with, which may be older than the
conversation's while the state is the same.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections import OrderedDict

from chat_service.domain.model import Conversation, ConversationState
from chat_service.ports import ConversationChange, CoordinationUnavailable, SessionCache

log = logging.getLogger(__name__)

_PUT_STATES_KEPT = 4096


class StateCacheFeed:
    def __init__(self, cache: SessionCache, *, workers: int = 2, max_pending: int = 1024) -> None:
        if workers < 1 or max_pending < 1:
            raise ValueError("workers and max_pending must be at least 1")
        self._cache = cache
        self._max_workers = workers
        self._max_pending = max_pending
        self._backlog: OrderedDict[tuple[str, str], Conversation] = OrderedDict()
        # The state last put of each conversation (bounded like the store's
        # conversation cache: past it, all go, and the next commits put again).
        # A put under way is marked by an object of its own until it is answered.
        self._put_states: dict[tuple[str, str], ConversationState | object] = {}
        self._workers: set[asyncio.Task[None]] = set()
        self._active = 0  # workers not yet past their last look at the backlog
        self.dropped = 0

    @property
    def pending(self) -> int:
        """Conversations waiting for a put."""
        return len(self._backlog)

    def committed(self, change: ConversationChange) -> None:
        """A ConversationWriter listener."""
        conversation = change.conversation
        key = (conversation.tenant_id, conversation.conversation_id)
        waiting = self._backlog.get(key)
        if waiting is not None and waiting.version >= conversation.version:
            return
        self._backlog[key] = conversation  # a replacement keeps its place in line
        if len(self._backlog) > self._max_pending:
            self._backlog.popitem(last=False)
            self.dropped += 1
        if self._active < self._max_workers:
            self._active += 1
            # In a context of its own: it outlives the call that started it
            # (whose trace its log lines must not name).
            worker = asyncio.create_task(
                self._work(), name="conversation state cache feed", context=contextvars.Context()
            )
            self._workers.add(worker)
            worker.add_done_callback(self._workers.discard)

    async def _work(self) -> None:
        try:
            while self._backlog:
                key, conversation = self._backlog.popitem(last=False)
                if self._put_states.get(key) is not conversation.state:
                    await self._put(key, conversation)
        finally:
            # In the same step as the empty backlog was seen: a commit from
            # now on starts a worker of its own.
            self._active -= 1

    async def _put(self, key: tuple[str, str], conversation: Conversation) -> None:
        # The state counts as put once the cache took it, and only if no other
        # put of the conversation started meanwhile (the other worker's, which
        # may land after this one); a put that fails or is refused (a newer
        # version is cached) does not count.
        under_way = object()
        if len(self._put_states) >= _PUT_STATES_KEPT:
            self._put_states.clear()
        self._put_states[key] = under_way
        try:
            stored = await self._cache.put_conversation_state(
                conversation.tenant_id,
                conversation.conversation_id,
                conversation.state,
                version=conversation.version,
            )
            if stored and self._put_states.get(key) is under_way:
                self._put_states[key] = conversation.state
        except CoordinationUnavailable as exc:
            log.debug("conversation state not cached: %s", exc)
        except Exception:
            # A cache is never worth a worker: the next state still goes.
            log.exception("caching the state of %s failed", conversation.conversation_id)

    async def drain(self) -> None:
        """Wait until the backlog is written (at shutdown, and in tests)."""
        while self._workers:
            await asyncio.gather(*self._workers, return_exceptions=True)

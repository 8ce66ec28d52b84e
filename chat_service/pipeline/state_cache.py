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
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict

from chat_service.domain.model import Conversation
from chat_service.ports import ConversationChange, CoordinationUnavailable, SessionCache

log = logging.getLogger(__name__)


class StateCacheFeed:
    def __init__(self, cache: SessionCache, *, workers: int = 2, max_pending: int = 1024) -> None:
        if workers < 1 or max_pending < 1:
            raise ValueError("workers and max_pending must be at least 1")
        self._cache = cache
        self._max_workers = workers
        self._max_pending = max_pending
        self._backlog: OrderedDict[tuple[str, str], Conversation] = OrderedDict()
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
            worker = asyncio.create_task(self._work(), name="conversation state cache feed")
            self._workers.add(worker)
            worker.add_done_callback(self._workers.discard)

    async def _work(self) -> None:
        try:
            while self._backlog:
                _, conversation = self._backlog.popitem(last=False)
                await self._put(conversation)
        finally:
            # In the same step as the empty backlog was seen: a commit from
            # now on starts a worker of its own.
            self._active -= 1

    async def _put(self, conversation: Conversation) -> None:
        try:
            await self._cache.put_conversation_state(
                conversation.tenant_id,
                conversation.conversation_id,
                conversation.state,
                version=conversation.version,
            )
        except CoordinationUnavailable as exc:
            log.debug("conversation state not cached: %s", exc)
        except Exception:
            # A cache is never worth a worker: the next state still goes.
            log.exception("caching the state of %s failed", conversation.conversation_id)

    async def drain(self) -> None:
        """Wait until the backlog is written (at shutdown, and in tests)."""
        while self._workers:
            await asyncio.gather(*self._workers, return_exceptions=True)

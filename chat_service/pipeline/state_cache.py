"""Writes each committed conversation's state through to the session cache,
where the rest of the platform reads it without asking the store.

Best effort, off the caller's path: the cache refuses a state older than the
one it has (puts from several processes may arrive out of order), and a put
that fails (the cache is down) leaves an entry that expires.
"""

from __future__ import annotations

import asyncio
import logging

from chat_service.ports import ConversationChange, CoordinationUnavailable, SessionCache

log = logging.getLogger(__name__)


class StateCacheFeed:
    def __init__(self, cache: SessionCache) -> None:
        self._cache = cache
        self._pending: set[asyncio.Task[None]] = set()

    def committed(self, change: ConversationChange) -> None:
        """A ConversationWriter listener."""
        task = asyncio.create_task(self._put(change))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _put(self, change: ConversationChange) -> None:
        conversation = change.conversation
        try:
            await self._cache.put_conversation_state(
                conversation.tenant_id,
                conversation.conversation_id,
                conversation.state,
                version=conversation.version,
            )
        except CoordinationUnavailable as exc:
            log.debug("conversation state not cached: %s", exc)

    async def drain(self) -> None:
        """Wait for the puts under way (at shutdown, and in tests)."""
        await asyncio.gather(*self._pending, return_exceptions=True)

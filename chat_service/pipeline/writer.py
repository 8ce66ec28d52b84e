"""Writes conversation changes and tells listeners once they are committed."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from chat_service.ports import ConversationChange, ConversationStore

log = logging.getLogger(__name__)

# Called after a change is committed, on the event loop; must not block
# (the outbox relay's wake-up, later the live fan-out).
CommitListener = Callable[[ConversationChange], None]


class ConversationWriter:
    def __init__(self, store: ConversationStore, listeners: Sequence[CommitListener] = ()) -> None:
        self._store = store
        self._listeners = list(listeners)

    def subscribe(self, listener: CommitListener) -> None:
        self._listeners.append(listener)

    async def write(self, change: ConversationChange) -> None:
        await self._store.write(change)
        for listener in self._listeners:
            try:
                listener(change)
            except Exception:
                # The change is durable; a failing listener must not turn a
                # committed write into an error for the caller.
                log.exception("commit listener failed")

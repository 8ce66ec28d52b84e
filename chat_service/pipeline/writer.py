"""Writes conversation changes, remembers what it wrote, and tells listeners
once they are committed.

Every conversation write of the service goes through ConversationWriter,
under the conversation's lock. So the conversation it last wrote is, for as
long as nobody else writes it, the stored one: SendMessage reads it from
here (ConversationCache) instead of a store read per call.

Somebody else may write it: another process (shared coordination), or a
writer whose lock ran out. Then the cached copy is stale, and the write
built on it names a version the store no longer has: VersionConflict,
nothing written (the store checks every write's version and fence). The
caller then reads the conversation again (`fresh`) and decides anew
(MessageIntake.take_new). A stale copy can mislead only towards a write,
never away from one: what makes a conversation refuse a message (closed,
another user or channel) never changes back.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence

from chat_service.domain.model import Conversation
from chat_service.ports import ConversationChange, ConversationStore, NoTracer, Tracer

log = logging.getLogger(__name__)

# Called after a change is committed, on the event loop; must not block
# (the outbox relay's wake-up, later the live fan-out).
CommitListener = Callable[[ConversationChange], None]

# Conversations kept; the least recently used go first. A conversation is
# small but its engine state may reach 64 KiB (engine_reply.MAX_STATE_BYTES).
CACHED_CONVERSATIONS = 4096


class ConversationCache:
    """The conversations written (or read under their lock) last, by key."""

    def __init__(self, store: ConversationStore, *, size: int = CACHED_CONVERSATIONS) -> None:
        self._store = store
        self._size = size
        self._entries: OrderedDict[tuple[str, str], Conversation] = OrderedDict()

    async def get(
        self, tenant_id: str, conversation_id: str, *, fresh: bool = False
    ) -> Conversation | None:
        """The conversation, from here unless `fresh` or unknown here.
        Call it holding the conversation's lock: what it reads is kept."""
        key = (tenant_id, conversation_id)
        if not fresh:
            cached = self._entries.get(key)
            if cached is not None:
                self._entries.move_to_end(key)
                return cached
        found = await self._store.get_conversation(tenant_id, conversation_id)
        if found is None:
            self._entries.pop(key, None)
        else:
            self._keep(found)
        return found

    def written(self, conversation: Conversation) -> None:
        self._keep(conversation)

    def forget(self, tenant_id: str, conversation_id: str) -> None:
        self._entries.pop((tenant_id, conversation_id), None)

    def __len__(self) -> int:
        return len(self._entries)

    def _keep(self, conversation: Conversation) -> None:
        key = (conversation.tenant_id, conversation.conversation_id)
        self._entries[key] = conversation
        self._entries.move_to_end(key)
        if len(self._entries) > self._size:
            self._entries.popitem(last=False)


class ConversationWriter:
    def __init__(
        self,
        store: ConversationStore,
        listeners: Sequence[CommitListener] = (),
        *,
        cache_size: int = CACHED_CONVERSATIONS,
        tracer: Tracer | None = None,
    ) -> None:
        self._store = store
        self._listeners = list(listeners)
        self._tracer = tracer or NoTracer()
        self.conversations = ConversationCache(store, size=cache_size)

    def subscribe(self, listener: CommitListener) -> None:
        self._listeners.append(listener)

    async def write(self, change: ConversationChange) -> None:
        conversation = change.conversation
        try:
            with self._tracer.span("chat.store.write"):
                await self._store.write(change)
        except BaseException:
            # Refused, or not known to be written (a lost store, a
            # cancellation while the write runs): the next reader reads it.
            self.conversations.forget(conversation.tenant_id, conversation.conversation_id)
            raise
        self.conversations.written(conversation)
        for listener in self._listeners:
            try:
                listener(change)
            except Exception:
                # The change is durable; a failing listener must not turn a
                # committed write into an error for the caller.
                log.exception("commit listener failed")


# How long a background reader of the outbox (the relay, the event tail) is
# left to sleep after a commit: the commits of that time are then read in one
# pass (one claim, one mark) instead of a pass per commit. Events leave (and
# reach watches) at most this much later.
COMMIT_WAKE_DELAY = 0.01


class DelayedWake:
    """Calls `wake` `delay` seconds after the first call since it last did:
    once for every call of that interval. Call it on the event loop."""

    def __init__(self, wake: Callable[[], None], delay: float = COMMIT_WAKE_DELAY) -> None:
        self._wake = wake
        self._delay = delay
        self._pending: asyncio.TimerHandle | None = None

    def __call__(self, *_: object) -> None:
        if self._pending is None:
            self._pending = asyncio.get_running_loop().call_later(self._delay, self._fire)

    def _fire(self) -> None:
        self._pending = None
        self._wake()

"""Which conversation a session's message goes to.

A message with a session id and no conversation id continues the session's
conversation (the session cache remembers it) while that conversation can
take it (Conversation.continues_session), else starts a new one. The cache
is only a cache: without it, the message starts a conversation.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from chat_service.domain.model import Conversation, InboundMessage
from chat_service.pipeline.writer import ConversationCache
from chat_service.ports import (
    ConversationLocks,
    CoordinationUnavailable,
    LockLease,
    SessionCache,
)

log = logging.getLogger(__name__)


class SessionRouting:
    def __init__(
        self,
        *,
        conversations: ConversationCache,
        locks: ConversationLocks,
        sessions: SessionCache,
        new_id: Callable[[], str],
    ) -> None:
        self._conversations = conversations
        self._locks = locks
        self._sessions = sessions
        self._new_id = new_id

    @asynccontextmanager
    async def hold_conversation(
        self, msg: InboundMessage, timeout: float, *, fresh: bool = False
    ) -> AsyncIterator[tuple[str, LockLease]]:
        """Holds the lock of the conversation a session message goes to: the
        session's, if it can take the message (checked under its lock, so a
        close that came first is seen), else a new one. Entered under the
        session's lock, which every message that could change the answer
        also takes. The conversation comes from the cache unless `fresh`:
        if another process changed it since, the write finds out."""
        chosen = await self._session_conversation_id(msg)
        if chosen is not None:
            async with self._locks.hold(msg.tenant_id, chosen, timeout=timeout) as lease:
                found = await self._conversations.get(msg.tenant_id, chosen, fresh=fresh)
                if found is not None and found.continues_session(msg.user_id, msg.channel):
                    yield chosen, lease
                    return
        created = self._new_id()
        async with self._locks.hold(msg.tenant_id, created, timeout=timeout) as lease:
            yield created, lease

    async def _session_conversation_id(self, msg: InboundMessage) -> str | None:
        try:
            session = await self._sessions.get_session(msg.tenant_id, msg.session_id)
        except CoordinationUnavailable:
            return None
        if session is None:
            return None
        conversation_id = session.get("conversation_id")
        if not isinstance(conversation_id, str) or session.get("user_id") != msg.user_id:
            return None  # another user's session id: not worth that lock's wait
        return conversation_id

    async def remember(self, conversation: Conversation, session_id: str) -> None:
        try:
            await self._sessions.put_session(
                conversation.tenant_id,
                session_id,
                {
                    "conversation_id": conversation.conversation_id,
                    "user_id": conversation.user_id,
                    "channel": conversation.channel.value,
                },
            )
        except CoordinationUnavailable:
            log.debug("session %s not cached (the cache is unavailable)", session_id)

"""ExportConversation: a conversation's messages, streamed from the store."""

from __future__ import annotations

from collections.abc import AsyncIterator

from chat_service.domain.errors import InvalidArgument, conversation_not_found
from chat_service.domain.model import Conversation, Message
from chat_service.domain.validation import conversation_id_problem
from chat_service.pipeline.errors import port_errors
from chat_service.ports import ConversationStore


class ExportConversation:
    def __init__(self, store: ConversationStore) -> None:
        self._store = store

    async def open(
        self, tenant_id: str, conversation_id: str
    ) -> tuple[Conversation, AsyncIterator[Message]]:
        """The conversation, and its messages up to its last sequence now (a
        snapshot), read from the store in batches as they are consumed."""
        problem = conversation_id_problem(conversation_id)
        if problem:
            raise InvalidArgument.of("conversation_id", problem)
        with port_errors():
            conversation = await self._store.get_conversation(tenant_id, conversation_id)
        if conversation is None:
            raise conversation_not_found(conversation_id)
        return conversation, self._messages(conversation)

    async def _messages(self, conversation: Conversation) -> AsyncIterator[Message]:
        with port_errors():
            async for message in self._store.iter_messages(
                conversation.tenant_id,
                conversation.conversation_id,
                through_sequence=conversation.last_sequence,
            ):
                yield message
